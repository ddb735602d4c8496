"""`llama_cpp`: a local GGUF (a model-store name or a path) run in process; JSON schema via its grammar.

llama.cpp re-evaluates only the part of a prompt that differs from the context's previous one. Requests
with different system prompts (input writing, answering, judging) would keep evicting each other's
prefix, so each system prompt gets its own context (the weights are memory-mapped once and shared);
on CPU this turns a ~1,300-token few-shot prompt into the few dozen tokens of the new input.

JSON-Schema requests use the runtime's grammar-last sampler: as fast as free sampling, always valid. In the
batch engine, when asked (`token_probs`), they also report how sure the model was of each token, among the
tokens the grammar allowed (the `confident` verifier reads it).

A model that carries its chat template (every current GGUF) runs in a `BatchEngine` instead: up to
`teacher.concurrency` requests decode together and share cached prefixes across slots.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from typing import Any

from kit.core.errors import UserError
from kit.distill.teachers.base import Completion, Messages, TeacherBackend
from kit.models.reference import resolve_model
from runtime.backends.base import default_threads
from runtime.backends.grammar import grammar_for
from runtime.backends.llama_sampling import lazy_grammar_llama_class
from runtime.backends.batch_engine import BatchEngine, BatchingUnsupported
from runtime.errors import ContextLengthError
from runtime.params import GenerationParams


class LlamaCppTeacher(TeacherBackend):
    name = "llama_cpp"
    max_contexts = 3  # distinct system prompts kept warm at once (least recently used one is closed)

    def __init__(self, config):
        super().__init__(config)
        self._contexts: OrderedDict[str, object] = OrderedDict()
        self._path: str | None = None
        self._lock = asyncio.Lock()  # the cores are shared: requests take turns
        self._engine = None

    async def check(self) -> None:
        await asyncio.to_thread(self._start)

    def _start(self) -> None:
        """The batch engine when the model allows it, else one context per system prompt (once)."""
        if self._engine is not None or self._contexts:
            return
        if self.config.concurrency > 1:

            try:
                self._engine = BatchEngine(self._model_path(), parallel=self.config.concurrency,
                                           n_ctx=self.config.n_ctx, n_threads=self._threads())
                return
            except BatchingUnsupported:
                pass
            except ImportError:
                raise UserError("the llama_cpp teacher needs llama-cpp-python: pip install 'microkit[runtime]'") from None
        self._load("")

    def _model_path(self) -> str:
        if self._path is None:

            self._path = str(resolve_model(self.config.model).gguf())
        return self._path

    def _threads(self) -> int:

        return self.config.n_threads or default_threads()

    def _load(self, key: str):
        """The context for `key`; the one `check` loaded (key "") is handed to the first request."""
        if key in self._contexts:
            self._contexts.move_to_end(key)
            return self._contexts[key]
        if "" in self._contexts:
            self._contexts[key] = self._contexts.pop("")
            return self._contexts[key]
        try:

            Llama = lazy_grammar_llama_class()
        except ImportError:
            raise UserError("the llama_cpp teacher needs llama-cpp-python: pip install 'microkit[runtime]'") from None
        if len(self._contexts) >= self.max_contexts:
            self._contexts.popitem(last=False)[1].close()
        self._contexts[key] = Llama(model_path=self._model_path(), n_ctx=self.config.n_ctx, n_threads=self._threads(),
                                    verbose=False)
        return self._contexts[key]

    @staticmethod
    def _context_key(messages: Messages) -> str:
        head = messages[0]["content"] if messages and messages[0].get("role") == "system" else ""
        return hashlib.sha256(head.encode()).hexdigest()

    async def complete(self, messages: Messages, schema: dict[str, Any] | None, params: dict[str, Any]) -> Completion:
        if self._engine is None and not self._contexts:  # no check() yet: the first request starts the model
            async with self._lock:
                await asyncio.to_thread(self._start)
        if self._engine is not None:
            try:
                reply = await asyncio.wrap_future(self._engine.submit(messages, schema, params, record_probs=self.token_probs))
            except ContextLengthError as err:
                raise UserError(f"{err}: raise teacher.n_ctx in the recipe") from None
            return Completion(reply.text, reply.prompt_tokens, reply.completion_tokens, token_probs=reply.token_probs)
        async with self._lock:
            return await asyncio.to_thread(self._complete, messages, schema, params)

    def _complete(self, messages: Messages, schema: dict[str, Any] | None, params: dict[str, Any]) -> Completion:
        llama = self._load(self._context_key(messages))
        kwargs = dict(params)
        if schema is not None:

            kwargs["grammar"] = grammar_for(GenerationParams(json_schema=schema))
        result = llama.create_chat_completion(messages=messages, **kwargs)
        usage = result.get("usage") or {}
        return Completion(result["choices"][0]["message"]["content"] or "",
                          usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))

    async def aclose(self) -> None:
        if self._engine is not None:
            await asyncio.to_thread(self._engine.close)
            self._engine = None
        while self._contexts:
            self._contexts.popitem()[1].close()

