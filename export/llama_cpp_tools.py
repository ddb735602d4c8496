"""llama.cpp's own command-line tools (llama-imatrix, llama-quantize, llama-perplexity), built once by
`scripts/setup.sh` from the pinned llama-cpp-python source release into the microkit cache."""

from __future__ import annotations

import subprocess
from pathlib import Path

from export.llama_cpp_source import llama_cpp_version
from kit.core import settings
from kit.core.errors import UserError

TOOLS = ("llama-imatrix", "llama-quantize", "llama-perplexity")


def tools_root() -> Path:
    return settings.microkit_home() / "tools"


def tool(name: str) -> Path | None:
    """The cached build of llama.cpp tool `name` for the installed llama-cpp-python version, or None; of several
    builds (other CMAKE_ARGS), the latest made."""
    builds = [folder / "bin" / name for folder in tools_root().glob(f"llama.cpp-{llama_cpp_version()}-*")]
    built = [path for path in builds if path.is_file()]
    return max(built, key=lambda path: path.stat().st_mtime) if built else None


def run_tool(name: str, args: list[str], what: str, timeout_s: float = 1800) -> str:
    """Run a llama.cpp tool; its failure ends in one message with the last lines it printed."""
    path = tool(name)
    if path is None:
        raise UserError(f"{name} is not built: run `bash scripts/setup.sh` (it builds llama.cpp's tools once)")
    try:
        done = subprocess.run([str(path), *args], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise UserError(f"{name} did not finish {what} in {timeout_s:.0f}s") from None
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])[:400]
        raise UserError(f"{name} failed {what} (exit {done.returncode}): {tail}")
    return done.stdout + done.stderr
