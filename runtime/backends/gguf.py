"""GGUF through llama.cpp (llama-cpp-python's bindings, decoded by the runtime's batch engine): GPU offload when
the build has it, grammar-constrained JSON (checked token by token the way llama.cpp itself does it: see
llama_sampling)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from runtime.backends.base import LoadOptions, default_threads
from runtime.backends.grammar import grammar_for, json_schema_gbnf  # noqa: F401 - json_schema_gbnf re-exported
from runtime.errors import ContextLengthError
from runtime.manifest import BundleError
from runtime.params import GenerationParams, GenerationStats


class GGUFBackend:
    """GGUF through the runtime's `BatchEngine`: up to `parallel` requests decoded together (continuous batching
    in one llama.cpp context). A request starts from the longest prompt prefix a slot still holds (the system
    prompt and template head are read once), as llama-server does by default; a request with `cache_prompt`
    False is read from its first token."""

    name = "gguf"
    constrains_json = True

    def __init__(self, model_path: Path, options: LoadOptions):
        import llama_cpp

        from runtime.backends.batch_engine import BatchEngine

        gpu_build = bool(llama_cpp.llama_supports_gpu_offload())
        if options.device == "gpu" and not gpu_build:
            raise BundleError("device='gpu' but this llama-cpp-python build has no GPU offload: rebuild it with "
                              "CMAKE_ARGS=\"-DGGML_CUDA=on\" (or -DGGML_METAL=on), or pass device='cpu'")
        self.device = "gpu" if gpu_build and options.device != "cpu" else "cpu"
        self.parallel = max(1, options.parallel)
        self.engine = None
        try:
            self.engine = BatchEngine(str(model_path), parallel=self.parallel, n_ctx=options.n_ctx,
                                      n_threads=options.n_threads or default_threads(),
                                      n_gpu_layers=-1 if self.device == "gpu" else 0, require_chat_template=False)
        except ValueError as err:
            raise BundleError(f"llama.cpp cannot load {model_path} ({err}); is it a complete GGUF file?") from None
        self.llm = self.engine.llama  # tokenizer and metadata; the engine owns the decoding context
        self.n_ctx = options.n_ctx
        model = self.llm._model
        self.bos_token = model.token_get_text(self.llm.token_bos()) if self.llm.token_bos() >= 0 else ""
        self.eos_token = model.token_get_text(self.llm.token_eos()) if self.llm.token_eos() >= 0 else ""
        self._add_bos = bool(model.add_bos_token()) and self.llm.token_bos() >= 0
        self.chat_template = self.llm.metadata.get("tokenizer.chat_template")

    def tokenize(self, prompt: str) -> list[int]:
        add_bos = self._add_bos and not (self.bos_token and prompt.startswith(self.bos_token))
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)) if text else 0

    def generate(self, prompt: str, params: GenerationParams, stats: GenerationStats,
                 adapter: str | None = None) -> Iterator[str]:
        """Decoded together with the other requests in flight (with a loaded LoRA `adapter`, or the base alone);
        closing the iterator frees the slot at the next decode step."""
        tokens = self.tokenize(prompt)
        if len(tokens) >= self.n_ctx:
            raise ContextLengthError(f"the prompt has {len(tokens)} tokens; this model's context holds {self.n_ctx}")
        stats.prompt_tokens = len(tokens)
        handle = self.engine.submit_tokens(tokens, params, adapter)
        try:
            yield from handle
        finally:
            handle.cancel()
            if handle.finished is not None:
                stats.finish_reason = handle.finished.reason
                stats.completion_tokens = handle.finished.completion_tokens

    def cache_stats(self) -> dict[str, int]:
        """Prompt tokens of the requests started, and those taken from the shared prefix cache."""
        return {"prompt_tokens": self.engine.prompt_tokens, "reused_tokens": self.engine.reused_tokens}

    def close(self) -> None:
        engine, self.engine, self.llm = getattr(self, "engine", None), None, None
        if engine is not None:
            engine.close()  # closes its tokenizer's Llama too


class AdapterView:
    """One expert served as a LoRA adapter on a `GGUFBackend` that several experts share: the same backend
    interface, every generation decoded with this expert's adapter. The shared backend closes with its last view."""

    def __init__(self, shared: GGUFBackend, adapter: str, path: Path, users: list):
        shared.engine.load_adapter(adapter, str(path))
        self.shared, self.adapter, self._users = shared, adapter, users
        users.append(self)
        self.name, self.constrains_json, self.device = shared.name, shared.constrains_json, shared.device
        self.parallel, self.bos_token, self.eos_token = shared.parallel, shared.bos_token, shared.eos_token
        self.chat_template = shared.chat_template

    def generate(self, prompt: str, params: GenerationParams, stats: GenerationStats) -> Iterator[str]:
        return self.shared.generate(prompt, params, stats, adapter=self.adapter)

    def count_tokens(self, text: str) -> int:
        return self.shared.count_tokens(text)

    def cache_stats(self) -> dict[str, int]:
        return self.shared.cache_stats()

    def close(self) -> None:
        if self in self._users:
            self._users.remove(self)
            if not self._users:
                self.shared.close()
