"""`kit init`: scaffold a new recipe folder from a packaged template."""

from __future__ import annotations

import re
import sqlite3
from importlib import resources
from pathlib import Path

from kit.core.errors import UserError

TEMPLATES = ("tool-calling", "text-to-sql")


def scaffold(name: str, template: str, parent: Path = Path(".")) -> Path:
    """Write NAME/ with a recipe, seeds, an eval set (and a database for SQL) from a template."""
    if template not in TEMPLATES:
        raise UserError(f"unknown template '{template}': use one of {', '.join(TEMPLATES)}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
        raise UserError(f"'{name}' is not a valid name: use lowercase letters, digits, '-', '_' or '.'")
    target = Path(parent) / name
    if target.exists():
        raise UserError(f"{target} already exists: choose another name or remove it")
    source = resources.files("kit.recipe") / "templates" / template
    target.mkdir(parents=True)
    for item in source.iterdir():
        text = item.read_text(encoding="utf-8")
        if item.name == "recipe.yaml":
            text = text.format(name=name)
        if item.name == "schema.sql":
            db = sqlite3.connect(target / "database.sqlite")
            db.executescript(text)
            db.commit()
            db.close()
        (target / item.name).write_text(text, encoding="utf-8")
    return target / "recipe.yaml"
