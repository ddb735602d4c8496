"""Builds shop.db, the example's SQLite database (deterministic: the same file every run)."""

from __future__ import annotations

import random
import sqlite3
from datetime import date, timedelta
from pathlib import Path

SCHEMA = """
CREATE TABLE categories (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL UNIQUE,
                        city TEXT NOT NULL, country TEXT NOT NULL, signup_date TEXT NOT NULL);
CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, category_id INTEGER NOT NULL REFERENCES categories(id),
                       price REAL NOT NULL, stock INTEGER NOT NULL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
                     order_date TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN ('pending','shipped','delivered','cancelled')));
CREATE TABLE order_items (order_id INTEGER NOT NULL REFERENCES orders(id), product_id INTEGER NOT NULL REFERENCES products(id),
                          quantity INTEGER NOT NULL, unit_price REAL NOT NULL, PRIMARY KEY (order_id, product_id));
CREATE TABLE reviews (id INTEGER PRIMARY KEY, product_id INTEGER NOT NULL REFERENCES products(id),
                      customer_id INTEGER NOT NULL REFERENCES customers(id), rating INTEGER NOT NULL CHECK (rating BETWEEN 1 AND 5),
                      review_date TEXT NOT NULL);
"""

CATEGORIES = ["Books", "Electronics", "Kitchen", "Garden", "Toys", "Sports", "Clothing", "Beauty"]
PRODUCTS = {
    "Books": ["The Silent Sea", "Learning SQL", "Garden Through the Year", "Space Atlas", "Bread Baking Basics", "Mystery at Midnight"],
    "Electronics": ["Wireless Earbuds", "USB-C Charger", "Smart Watch", "Bluetooth Speaker", "E-Reader", "Webcam HD", "Power Bank"],
    "Kitchen": ["Chef Knife", "Cast Iron Pan", "Coffee Grinder", "Glass Teapot", "Cutting Board", "Spice Rack"],
    "Garden": ["Pruning Shears", "Watering Can", "Tomato Seeds", "Garden Gloves", "Hose Reel", "Bird Feeder"],
    "Toys": ["Wooden Blocks", "Puzzle 1000 Pieces", "Remote Car", "Plush Bear", "Kite", "Board Game Classic"],
    "Sports": ["Yoga Mat", "Running Shoes", "Tennis Racket", "Water Bottle", "Jump Rope", "Cycling Helmet"],
    "Clothing": ["Rain Jacket", "Wool Socks", "Denim Jeans", "Cotton T-Shirt", "Winter Hat", "Linen Shirt"],
    "Beauty": ["Face Cream", "Lip Balm", "Shampoo Bar", "Sunscreen SPF50", "Hand Soap", "Perfume Oil"],
}
FIRST = ["Ana", "Ben", "Chloe", "David", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemal", "Lucia", "Mateo",
         "Nora", "Oscar", "Priya", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wei", "Yara", "Zoe"]
LAST = ["Silva", "Muller", "Rossi", "Kowalski", "Tanaka", "Haddad", "Johnson", "Novak", "Garcia", "Berg", "Okafor", "Dubois"]
CITIES = [("Lisbon", "Portugal"), ("Porto", "Portugal"), ("Berlin", "Germany"), ("Munich", "Germany"), ("Paris", "France"),
          ("Lyon", "France"), ("Madrid", "Spain"), ("Rome", "Italy"), ("Tokyo", "Japan"), ("Toronto", "Canada"),
          ("Chicago", "USA"), ("Austin", "USA")]
STATUSES = ["delivered"] * 6 + ["shipped"] * 2 + ["pending", "cancelled"]


def build(path: Path) -> Path:
    rng = random.Random(7)
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    db.executemany("INSERT INTO categories VALUES (?, ?)", list(enumerate(CATEGORIES, 1)))
    products = []
    for cat_id, cat in enumerate(CATEGORIES, 1):
        for name in PRODUCTS[cat]:
            products.append((len(products) + 1, name, cat_id, round(rng.uniform(3, 180), 2), rng.randint(0, 120)))
    db.executemany("INSERT INTO products VALUES (?, ?, ?, ?, ?)", products)
    customers, emails = [], set()
    while len(customers) < 48:
        first, last = rng.choice(FIRST), rng.choice(LAST)
        email = f"{first}.{last}@example.com".lower()
        if email in emails:
            continue
        emails.add(email)
        city, country = rng.choice(CITIES)
        signup = date(2023, 1, 1) + timedelta(days=rng.randint(0, 700))
        customers.append((len(customers) + 1, f"{first} {last}", email, city, country, signup.isoformat()))
    db.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?)", customers)
    orders, items = [], []
    for order_id in range(1, 241):
        customer = rng.choice(customers[:42])  # a few customers never order
        day = date(2024, 1, 1) + timedelta(days=rng.randint(0, 540))
        orders.append((order_id, customer[0], day.isoformat(), rng.choice(STATUSES)))
        for product in rng.sample(products, rng.randint(1, 4)):
            items.append((order_id, product[0], rng.randint(1, 5), product[3]))
    db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", orders)
    db.executemany("INSERT INTO order_items VALUES (?, ?, ?, ?)", items)
    reviews = []
    for review_id in range(1, 161):
        day = date(2024, 2, 1) + timedelta(days=rng.randint(0, 520))
        reviews.append((review_id, rng.choice(products)[0], rng.choice(customers)[0],
                        rng.choices([1, 2, 3, 4, 5], weights=[1, 1, 2, 4, 5])[0], day.isoformat()))
    db.executemany("INSERT INTO reviews VALUES (?, ?, ?, ?, ?)", reviews)
    db.commit()
    db.close()
    return path


if __name__ == "__main__":
    print(build(Path(__file__).with_name("shop.db")))
