"""`llama_cpp`: a local GGUF (a model-store name or a path) run in process; JSON schema via its grammar."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from kit.errors import UserError
from kit.teachers.base import Completion, Messages, TeacherBackend


class LlamaCppTeacher(TeacherBackend):
    name = "llama_cpp"

    def __init__(self, config):
        super().__init__(config)
        self._llama = None
        self._lock = asyncio.Lock()  # one llama.cpp context: requests take turns

    async def check(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self):
        if self._llama is None:
            try:
                from llama_cpp import Llama
            except ImportError:
                raise UserError("the llama_cpp teacher needs llama-cpp-python: pip install 'microkit[runtime]'") from None
            from kit.model_ref import resolve_model

            path = resolve_model(self.config.model).gguf()
            threads = self.config.n_threads or max(1, (os.cpu_count() or 2))
            self._llama = Llama(model_path=str(path), n_ctx=self.config.n_ctx, n_threads=threads, verbose=False)
        return self._llama

    async def complete(self, messages: Messages, schema: dict[str, Any] | None, params: dict[str, Any]) -> Completion:
        async with self._lock:
            return await asyncio.to_thread(self._complete, messages, schema, params)

    def _complete(self, messages: Messages, schema: dict[str, Any] | None, params: dict[str, Any]) -> Completion:
        llama = self._load()
        kwargs = dict(params)
        if schema is not None:
            kwargs["response_format"] = {"type": "json_object", "schema": schema}
        result = llama.create_chat_completion(messages=messages, **kwargs)
        usage = result.get("usage") or {}
        return Completion(result["choices"][0]["message"]["content"] or "",
                          usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))

    async def aclose(self) -> None:
        if self._llama is not None:
            self._llama.close()
            self._llama = None
