"""File helpers the runtime and the kit share: the one sha256 of a file and the one atomic write.

A file is written beside its target as `<name>.partial` and moved over it in one rename, so a reader (or a
process killed mid-write) never sees half a file. Standard library only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def partial_path(path: Path | str) -> Path:
    """Where a file or folder is built before it replaces `path`."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def atomic_write_text(path: Path | str, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` through a `.partial` file and one rename."""
    path = Path(path)
    tmp = partial_path(path)
    try:
        tmp.write_text(text, encoding=encoding)
    except BaseException:  # a full disk: no half-written file is left to mistake for a finished one
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path
