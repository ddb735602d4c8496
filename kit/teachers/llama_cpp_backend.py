"""`llama_cpp`: a local GGUF (a model-store name or a path) run in process; JSON schema via its grammar.

llama.cpp re-evaluates only the part of a prompt that differs from the context's previous one. Requests
with different system prompts (input writing, answering, judging) would keep evicting each other's
prefix, so each system prompt gets its own context (the weights are memory-mapped once and shared);
on CPU this turns a ~1,300-token few-shot prompt into the few dozen tokens of the new input.

JSON-Schema requests use the runtime's grammar-last sampler: as fast as free sampling, always valid.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import OrderedDict
from typing import Any

from kit.errors import UserError
from kit.teachers.base import Completion, Messages, TeacherBackend


class LlamaCppTeacher(TeacherBackend):
    name = "llama_cpp"
    max_contexts = 3  # distinct system prompts kept warm at once (least recently used one is closed)

    def __init__(self, config):
        super().__init__(config)
        self._contexts: OrderedDict[str, object] = OrderedDict()
        self._path: str | None = None
        self._lock = asyncio.Lock()  # the cores are shared: requests take turns

    async def check(self) -> None:
        await asyncio.to_thread(self._load, "")

    def _load(self, key: str):
        """The context for `key`; the one `check` loaded (key "") is handed to the first request."""
        if key in self._contexts:
            self._contexts.move_to_end(key)
            return self._contexts[key]
        if "" in self._contexts:
            self._contexts[key] = self._contexts.pop("")
            return self._contexts[key]
        try:
            from runtime.backends.llama_sampling import lazy_grammar_llama_class

            Llama = lazy_grammar_llama_class()
        except ImportError:
            raise UserError("the llama_cpp teacher needs llama-cpp-python: pip install 'microkit[runtime]'") from None
        if self._path is None:
            from kit.model_ref import resolve_model

            self._path = str(resolve_model(self.config.model).gguf())
        if len(self._contexts) >= self.max_contexts:
            self._contexts.popitem(last=False)[1].close()
        threads = self.config.n_threads or max(1, (os.cpu_count() or 2))
        self._contexts[key] = Llama(model_path=self._path, n_ctx=self.config.n_ctx, n_threads=threads, verbose=False)
        return self._contexts[key]

    @staticmethod
    def _context_key(messages: Messages) -> str:
        head = messages[0]["content"] if messages and messages[0].get("role") == "system" else ""
        return hashlib.sha256(head.encode()).hexdigest()

    async def complete(self, messages: Messages, schema: dict[str, Any] | None, params: dict[str, Any]) -> Completion:
        async with self._lock:
            return await asyncio.to_thread(self._complete, messages, schema, params)

    def _complete(self, messages: Messages, schema: dict[str, Any] | None, params: dict[str, Any]) -> Completion:
        llama = self._load(self._context_key(messages))
        kwargs = dict(params)
        if schema is not None:
            kwargs["response_format"] = {"type": "json_object", "schema": schema}
        result = llama.create_chat_completion(messages=messages, **kwargs)
        usage = result.get("usage") or {}
        return Completion(result["choices"][0]["message"]["content"] or "",
                          usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))

    async def aclose(self) -> None:
        while self._contexts:
            self._contexts.popitem()[1].close()

