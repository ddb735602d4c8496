"""A full disk, recognised wherever it surfaces (an OSError, SQLite's "database or disk is full", a tool's
output naming it), so the CLI can end with one message that names the fix instead of a traceback."""

from __future__ import annotations

import errno
import sqlite3

FULL = (errno.ENOSPC, errno.EDQUOT)
_WORDS = ("no space left on device", "database or disk is full", "disk quota exceeded")


def disk_full(err: BaseException) -> OSError | sqlite3.OperationalError | BaseException | None:
    """The exception in `err`'s chain (itself, its cause or context) that says the disk is full, or None."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FULL:
            return current
        if any(word in str(current).lower() for word in _WORDS):
            return current
        current = current.__cause__ or current.__context__
    return None


def disk_full_message(err: BaseException) -> str:
    """One line naming what could not be written and the fix."""
    where = getattr(err, "filename", None)
    place = f" writing {where}" if where else ""
    return (f"the disk is full{place}: free some space (or pass --runs to a folder on a larger disk) and run the "
            "same command again; finished stages, stored samples and cached teacher answers are kept, and nothing "
            "half-written is reused")
