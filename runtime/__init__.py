"""The embeddable runtime: loads a bundle and serves the expert. The bottom layer: it owns the bundle manifest,
the GGUF and ONNX backends, schema-constrained output, the continuous-batching llama.cpp engine (shared by the
local teacher, the eval stage and the server), the OpenAI-compatible server, and the file and memory helpers
the layers above reuse.

Imports only llama_cpp, onnxruntime, tokenizers, numpy, jsonschema and jinja2 (each lazily, where used) and,
in runtime.server only, fastapi / uvicorn / sse-starlette — never kit, torch or transformers.

    from runtime import Expert
    with Expert.load("path/to/bundle") as expert:
        print(expert.chat([{"role": "user", "content": "hi"}]))
"""

from runtime.errors import BundleError, ContextLengthError, OutputError
from runtime.expert import Expert
from runtime.params import GenerationParams, GenerationStats

__all__ = ["BundleError", "ContextLengthError", "Expert", "GenerationParams", "GenerationStats", "OutputError"]
