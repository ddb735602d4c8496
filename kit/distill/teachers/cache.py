"""The request cache: one SQLite file in the run's data folder, keyed by the request's sha256.

Every answer is committed before it is used, so a re-run (after a crash or kill -9) spends nothing twice.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any


class RequestCache:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL, request TEXT)")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(responses)")}
        if "request" not in columns:  # a cache written before requests were kept
            self._db.execute("ALTER TABLE responses ADD COLUMN request TEXT")
        if "paid" not in columns:  # how many times the teacher answered this request (1 unless paid again)
            self._db.execute("ALTER TABLE responses ADD COLUMN paid INTEGER NOT NULL DEFAULT 1")

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict[str, Any], request: dict[str, Any] | None = None) -> None:
        """Store a reply; the request is kept beside it (what was asked, for audits and benchmarks)."""
        self._db.execute("INSERT INTO responses (key, value, request) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE "
                         "SET value = excluded.value, request = excluded.request, paid = paid + 1",
                         (key, json.dumps(value), json.dumps(request) if request is not None else None))

    def repeated(self) -> int:
        """Answers the teacher gave to a request that already had one (requests paid twice)."""
        return self._db.execute("SELECT coalesce(sum(paid - 1), 0) FROM responses").fetchone()[0]

    def requests(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self._db.execute("SELECT request FROM responses WHERE request IS NOT NULL")]

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self._db.close()
