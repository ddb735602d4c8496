"""`hf`: a local transformers model. No constrained decoding: the schema is stated in the prompt only."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from kit.core.errors import UserError
from kit.distill.teachers.base import Completion, Messages, TeacherBackend
from kit.models.reference import resolve_model


class HFTeacher(TeacherBackend):
    name = "hf"

    def __init__(self, config):
        super().__init__(config)
        self._model = None
        self._tokenizer = None
        self._lock = asyncio.Lock()

    async def check(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self):
        if self._model is None:
            try:
                import torch
                from transformers import AutoModelForCausalLM, AutoTokenizer
            except ImportError:
                raise UserError("the hf teacher needs torch and transformers: pip install 'microkit[train]'") from None

            source = resolve_model(self.config.model).hf()
            self._tokenizer = AutoTokenizer.from_pretrained(source)
            if self._tokenizer.chat_template is None:
                raise UserError(f"the hf teacher '{self.config.model}' has no chat template; use an instruct model")
            self._model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
            if self.config.n_threads:
                torch.set_num_threads(self.config.n_threads)
        return self._model, self._tokenizer

    async def complete(self, messages: Messages, schema: dict[str, Any] | None, params: dict[str, Any]) -> Completion:
        async with self._lock:
            return await asyncio.to_thread(self._complete, messages, schema, params)

    def _complete(self, messages: Messages, schema: dict[str, Any] | None, params: dict[str, Any]) -> Completion:
        import torch

        model, tokenizer = self._load()
        if schema is not None:
            note = f"\nReply with one JSON value only, matching this JSON Schema: {json.dumps(schema)}"
            messages = [*messages[:-1], {**messages[-1], "content": messages[-1]["content"] + note}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        torch.manual_seed(int(params.get("seed", 0)))
        temperature = float(params.get("temperature", 0.0))
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=int(params["max_tokens"]),
                                 do_sample=temperature > 0, temperature=temperature or None,
                                 top_p=float(params.get("top_p", 1.0)) if temperature > 0 else None,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        new = out[0, ids.shape[1]:]
        return Completion(tokenizer.decode(new, skip_special_tokens=True), int(ids.shape[1]), int(new.shape[0]))

    async def aclose(self) -> None:
        self._model = None
