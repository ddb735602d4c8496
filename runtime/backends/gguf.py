"""GGUF through llama.cpp (llama-cpp-python): GPU offload when the build has it, grammar-constrained JSON
(checked token by token the way llama.cpp itself does it: see llama_sampling)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from runtime.backends.base import LoadOptions, default_threads
from runtime.backends.grammar import grammar_for, json_schema_gbnf  # noqa: F401 - json_schema_gbnf re-exported
from runtime.backends.llama_sampling import lazy_grammar_llama_class
from runtime.errors import ContextLengthError
from runtime.manifest import BundleError
from runtime.params import GenerationParams, GenerationStats


class GGUFBackend:
    """One generation at a time through llama-cpp-python (`parallel` 1), or up to `parallel` decoded together
    by the runtime's `BatchEngine` (continuous batching in one llama.cpp context, cached prefixes shared)."""

    name = "gguf"
    constrains_json = True

    def __init__(self, model_path: Path, options: LoadOptions):
        import llama_cpp

        gpu_build = bool(llama_cpp.llama_supports_gpu_offload())
        if options.device == "gpu" and not gpu_build:
            raise BundleError("device='gpu' but this llama-cpp-python build has no GPU offload: rebuild it with "
                              "CMAKE_ARGS=\"-DGGML_CUDA=on\" (or -DGGML_METAL=on), or pass device='cpu'")
        self.device = "gpu" if gpu_build and options.device != "cpu" else "cpu"
        self.parallel = max(1, options.parallel)
        self.engine = None
        threads = options.n_threads or default_threads()
        gpu_layers = -1 if self.device == "gpu" else 0
        try:
            if self.parallel > 1:
                from runtime.backends.batch_engine import BatchEngine

                self.engine = BatchEngine(str(model_path), parallel=self.parallel, n_ctx=options.n_ctx,
                                          n_threads=threads, n_gpu_layers=gpu_layers, require_chat_template=False)
                self.llm = self.engine.llama  # tokenizer and metadata; the engine owns the decoding context
            else:
                self.llm = lazy_grammar_llama_class()(model_path=str(model_path), n_ctx=options.n_ctx,
                                                      n_threads=threads, n_threads_batch=threads,
                                                      n_gpu_layers=gpu_layers, verbose=False)
        except ValueError as err:
            raise BundleError(f"llama.cpp cannot load {model_path} ({err}); is it a complete GGUF file?") from None
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

    def generate(self, prompt: str, params: GenerationParams, stats: GenerationStats) -> Iterator[str]:
        tokens = self.tokenize(prompt)
        if len(tokens) >= self.n_ctx:
            raise ContextLengthError(f"the prompt has {len(tokens)} tokens; this model's context holds {self.n_ctx}")
        stats.prompt_tokens = len(tokens)
        if self.engine is not None:
            yield from self._generate_batched(tokens, params, stats)
            return
        # Evaluate every prompt from scratch: reusing a cached prefix changes the batch shapes and, with them,
        # the float rounding, so the same request could get a different greedy answer.
        self.llm.reset()
        chunks = self.llm.create_completion(
            tokens, max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
            top_k=params.top_k, min_p=0.0, repeat_penalty=params.repeat_penalty, stop=list(params.stop),
            seed=params.seed, grammar=grammar_for(params), stream=True)
        text = []
        try:
            for chunk in chunks:
                choice = chunk["choices"][0]
                if choice["text"]:
                    text.append(choice["text"])
                    yield choice["text"]
                if choice["finish_reason"]:
                    stats.finish_reason = choice["finish_reason"]
        finally:
            chunks.close()
            stats.completion_tokens = self.count_tokens("".join(text))

    def _generate_batched(self, tokens: list[int], params: GenerationParams, stats: GenerationStats) -> Iterator[str]:
        """Decoded together with the other requests in flight; a shared prefix already in the KV cache (system
        prompt, template head) is not read again. Closing the iterator frees the slot at the next step."""
        handle = self.engine.submit_tokens(tokens, params)
        try:
            yield from handle
        finally:
            handle.cancel()
            if handle.finished is not None:
                stats.finish_reason = handle.finished.reason
                stats.completion_tokens = handle.finished.completion_tokens

    def cache_stats(self) -> dict[str, int]:
        """Prompt tokens started and those reused from the shared prefix cache (batched mode; else zeros)."""
        engine = self.engine
        if engine is None:
            return {"prompt_tokens": 0, "reused_tokens": 0}
        return {"prompt_tokens": engine.prompt_tokens, "reused_tokens": engine.reused_tokens}

    def close(self) -> None:
        engine, self.engine = getattr(self, "engine", None), None
        llm, self.llm = getattr(self, "llm", None), None
        if engine is not None:
            engine.close()  # closes its own Llama too
        elif llm is not None:
            llm.close()
