"""microkit: recipe in, verified quantized micro-expert bundle out.

Layers, each importing only those below it (the import-linter contract in pyproject.toml checks it):
kit.cli -> kit.pipeline -> kit.recipe -> kit.evaluate -> {kit.distill, trainers, export} -> kit.models
-> kit.core -> runtime.
"""

from kit.core.version import __version__

__all__ = ["__version__"]
