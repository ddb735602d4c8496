"""Hashing and atomic writes, in one place for all of kit (the file-level pieces come from runtime.files, which
the runtime needs too): content fingerprints of files and folders, JSON written atomically, and a folder or
file built beside its target and swapped in whole."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from runtime.files import atomic_write_text, partial_path, sha256_file

__all__ = ["atomic_output", "atomic_write_json", "atomic_write_text", "fingerprint", "partial_path", "sha256_file"]


def atomic_write_json(path: Path | str, value: Any, **dumps: Any) -> Path:
    """`value` as indented JSON (ensure_ascii off unless given), written through a `.partial` file."""
    dumps = {"indent": 2, "ensure_ascii": False, **dumps}
    return atomic_write_text(path, json.dumps(value, **dumps) + "\n")


@contextmanager
def atomic_output(path: Path | str) -> Iterator[Path]:
    """Yield a clean `.partial` path to build a file or folder at; when the block ends without an error it
    replaces `path` whole (an existing folder there is removed first), else it is removed."""
    path = Path(path)
    tmp = partial_path(path)
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if path.is_dir() and tmp.is_dir():
        shutil.rmtree(path)
    os.replace(tmp, path)


def fingerprint(path: Path | str, skip_prefixes: tuple[str, ...] = ()) -> str:
    """Content hash of a file or a folder (relative names + bytes), for stage inputs. Files whose name starts
    with one of `skip_prefixes` are left out (e.g. the `cache-` files `datasets` writes beside a dataset)."""
    path = Path(path)
    digest = hashlib.sha256()
    root = path if path.is_dir() else path.parent
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file.name.startswith(skip_prefixes):  # an empty tuple matches no name
            continue
        digest.update(file.relative_to(root).as_posix().encode())
        with open(file, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
