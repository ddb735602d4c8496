"""The one peak-memory figure every report uses: this process's own peak resident set."""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's own peak RSS in MiB. Linux carries ru_maxrss over exec (a child started by a 4 GB parent
    would report 4 GB), so VmHWM, which belongs to the process's own memory map, is read first."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux
