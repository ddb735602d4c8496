"""Merge a LoRA adapter into its base and save a self-contained HF folder (safetensors, tokenizer, template)."""

from __future__ import annotations

import json
from pathlib import Path

from kit.core.errors import UserError
from kit.core.files import atomic_output
from kit.models.base_model import BASE_MODEL_FILE, BaseModel, is_full_model
from kit.models.gguf_tokenizer import tokenizer_from_gguf


def adapter_base(adapter: Path) -> str:
    """The base model an adapter folder names (peft's adapter_config.json, or the train stage's base_model.json)."""
    config = adapter / "adapter_config.json"
    if is_full_model(adapter) and (adapter / BASE_MODEL_FILE).is_file():
        return json.loads((adapter / BASE_MODEL_FILE).read_text(encoding="utf-8"))["spec"]
    if not config.is_file():
        raise UserError(f"{adapter} is not a peft adapter folder (no adapter_config.json); pass the train stage's adapter/")
    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{config} names no base_model_name_or_path; pass the base with --base")
    return base


def load_base_tokenizer(base: BaseModel):
    """The original tokenizer: rebuilt from the source GGUF when there is one, else the base folder's."""
    from transformers import AutoTokenizer

    if base.source_gguf is not None:
        return tokenizer_from_gguf(base.source_gguf)
    return AutoTokenizer.from_pretrained(base.hf_path)


def merge_adapter(base: BaseModel, adapter: Path | None, out: Path) -> Path:
    """Base + adapter -> out/ (float32 safetensors, tokenizer, chat template, generation config). A fully
    fine-tuned model (train.method: full) in place of the adapter is saved the same way, with the base's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    full = adapter is not None and is_full_model(adapter)
    model = AutoModelForCausalLM.from_pretrained(str(adapter) if full else base.hf_path, dtype=torch.float32)
    if adapter is not None and not full:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tokenizer = load_base_tokenizer(base)
    for key in ("bos", "eos", "pad"):
        token_id = getattr(tokenizer, f"{key}_token_id")
        if token_id is not None:
            setattr(model.config, f"{key}_token_id", token_id)
            setattr(model.generation_config, f"{key}_token_id", token_id)
    with atomic_output(out) as partial:
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
    return out
