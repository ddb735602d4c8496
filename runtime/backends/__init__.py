"""Runtime backends behind one small interface (runtime.backends.base.Backend); a name maps to a class."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from runtime.backends.base import Backend, LoadOptions
from runtime.manifest import BundleError

# name -> "module:Class"; imported only when used, so an ONNX-only app never loads llama.cpp.
BACKENDS = {
    "gguf": "runtime.backends.gguf:GGUFBackend",
    "onnx": "runtime.backends.onnx:ONNXBackend",
    "onnx-genai": "runtime.backends.onnx_genai:GenaiBackend",
}


def open_backend(name: str, model_path: Path, options: LoadOptions) -> Backend:
    if name not in BACKENDS:
        raise BundleError(f"unknown backend {name!r}; use one of: auto, {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(import_module(module), cls)(model_path, options)


__all__ = ["BACKENDS", "Backend", "LoadOptions", "open_backend"]
