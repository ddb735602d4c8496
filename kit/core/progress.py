"""Progress that reads well on a terminal and in a log.

On a terminal, bars redraw in place. When stderr is not a terminal (CI, `nohup`, `kit build > build.log`),
redraws would pile up as carriage-return noise, so progress prints one plain line every LOG_EVERY_S seconds
instead, and the libraries' own per-operation bars (datasets' map/save, the hub's downloads) are off.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

LOG_EVERY_S = 10.0


def interactive(stream: TextIO | None = None) -> bool:
    """True when `stream` (default: stderr) is a terminal."""
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class LineWriter:
    """A file for tqdm that writes each redraw as one whole line."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        for line in text.replace("\r", "\n").split("\n"):
            if line.strip():
                self.stream.write(line.rstrip() + "\n")

    def flush(self) -> None:
        self.stream.flush()


def tqdm_options() -> dict[str, Any]:
    """Keyword arguments for tqdm: a live bar on a terminal, a plain line every LOG_EVERY_S seconds otherwise."""
    if interactive():
        return {"dynamic_ncols": True}
    return {"file": LineWriter(sys.stderr), "mininterval": LOG_EVERY_S, "maxinterval": LOG_EVERY_S, "ascii": True,
            "ncols": 100}


class LogLines:
    """Says when the next progress line is due: at most one every LOG_EVERY_S seconds, the first at once."""

    def __init__(self, every_s: float = LOG_EVERY_S):
        self.every_s = every_s
        self._last = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            return True
        return False


def quiet_library_bars() -> None:
    """Off a terminal, switch off datasets' and the hub's own bars (before those libraries are imported)."""
    if interactive():
        return
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
