"""`sql`: run the query on the recipe's SQLite database (read-only, time-limited) and compare result sets."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from pathlib import Path

from kit.distill.critic.base import Answer, Candidate, Verifier, field_of

MAX_ROWS = 10_000


class SqlError(Exception):
    pass


def run_query(database: Path, query: str, timeout_s: float, ordered: bool = False) -> tuple:
    """The query's rows as a hashable result set, order-insensitive unless `ordered`; SqlError on any failure."""
    deadline = time.monotonic() + timeout_s
    db = sqlite3.connect(f"{Path(database).resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    try:
        db.execute("PRAGMA query_only = ON")
        db.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
        try:
            rows = db.execute(query).fetchmany(MAX_ROWS + 1)
        except sqlite3.OperationalError as err:
            if str(err) == "interrupted":
                raise SqlError(f"timeout after {timeout_s:g}s") from None
            raise SqlError(f"sql error: {err}") from None
        except (sqlite3.Error, ValueError) as err:  # ValueError: e.g. several statements / NUL bytes
            raise SqlError(f"sql error: {err}") from None
        if len(rows) > MAX_ROWS:
            raise SqlError(f"more than {MAX_ROWS} rows")
        result = tuple(tuple(_rounded(v) for v in row) for row in rows)
        return result if ordered else tuple(sorted(result, key=repr))
    finally:
        db.close()


def _rounded(value):
    """Floats compared to 6 decimals, so SUM/AVG over the same rows in another order still match."""
    return round(value, 6) if isinstance(value, float) else value


class SqlCheck(Verifier):
    type = "sql"

    async def check(self, candidate: Candidate) -> str | None:
        return await asyncio.to_thread(self._check, candidate)

    def _check(self, candidate: Candidate) -> str | None:
        mode = self.config.compare
        if mode == "majority" and len(candidate.answers) > 1:
            return self._majority(candidate)
        query, problem = field_of(candidate.answer, self.config.field, "query")
        if problem:
            return problem
        try:
            result = run_query(self.config.database, query, self.config.timeout_s)
        except SqlError as err:
            return str(err)
        if mode == "reference":
            return self._against_reference(candidate, result)
        return None

    def _against_reference(self, candidate: Candidate, result: tuple) -> str | None:
        if candidate.reference is None:
            return "no reference answer was written with this input"
        query, problem = field_of(Answer(candidate.reference, ""), self.config.field, "query")
        if problem:
            return f"reference: {problem}"
        try:
            expected = run_query(self.config.database, query, self.config.timeout_s)
        except SqlError as err:
            return f"the reference query failed ({err})"
        return None if result == expected else "result set differs from the reference's"

    def _majority(self, candidate: Candidate) -> str | None:
        """Group the N answers by result set; keep the sample only when a strict majority agree."""
        results: list[tuple | None] = []
        for answer in candidate.answers:
            query, problem = field_of(answer, self.config.field, "query")
            try:
                results.append(None if problem else run_query(self.config.database, query, self.config.timeout_s))
            except SqlError:
                results.append(None)
        counts = Counter(r for r in results if r is not None)
        if not counts:
            return "none of the answers executed"
        best, agree = counts.most_common(1)[0]
        if agree * 2 <= len(results):
            return f"no majority result set ({agree}/{len(results)} agree)"
        candidate.chosen = results.index(best)
        candidate.votes = agree
        return None
