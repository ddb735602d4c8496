CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL, country TEXT NOT NULL);
CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, author_id INTEGER NOT NULL REFERENCES authors(id),
                    year INTEGER NOT NULL, pages INTEGER NOT NULL);
INSERT INTO authors VALUES (1, 'Chinua Achebe', 'Nigeria'), (2, 'Jane Austen', 'England'), (3, 'Haruki Murakami', 'Japan'),
                           (4, 'Gabriel Garcia Marquez', 'Colombia');
INSERT INTO books VALUES (1, 'Things Fall Apart', 1, 1958, 209), (2, 'Arrow of God', 1, 1964, 230),
                         (3, 'Pride and Prejudice', 2, 1813, 432), (4, 'Emma', 2, 1815, 474),
                         (5, 'Kafka on the Shore', 3, 2002, 505), (6, 'Norwegian Wood', 3, 1987, 296),
                         (7, 'One Hundred Years of Solitude', 4, 1967, 417);
