"""Merge a LoRA adapter into its base and save a self-contained HF folder (safetensors, tokenizer, template)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from kit.errors import UserError
from kit.model_ref import resolve_model
from kit.model_store import HF_SOURCE_FILE, ModelStore


@dataclass(frozen=True)
class BaseModel:
    """The base the adapter was trained on, and the GGUF it came from (if any: its tokenizer is the truth)."""

    spec: str
    name: str
    hf_path: str
    source_gguf: Path | None
    license: str


def adapter_base(adapter: Path) -> str:
    """The base model an adapter folder names (peft's adapter_config.json)."""
    config = adapter / "adapter_config.json"
    if not config.is_file():
        raise UserError(f"{adapter} is not a peft adapter folder (no adapter_config.json); pass the train stage's adapter/")
    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{config} names no base_model_name_or_path; pass the base with --base")
    return base


def resolve_base(spec: str, store: ModelStore | None = None) -> BaseModel:
    """Resolve a store name, GGUF, HF folder or hub id to an HF path plus the GGUF it derives from."""
    store = store or ModelStore()
    ref = resolve_model(spec, store)
    source, license_ = None, "unknown"
    if ref.kind == "store":
        source, license_ = ref.gguf(store), store.model(spec).license
    elif ref.kind == "gguf":
        source = Path(ref.spec)
    elif ref.kind == "hf_dir" and (Path(ref.spec) / HF_SOURCE_FILE).is_file():
        recorded = Path(json.loads((Path(ref.spec) / HF_SOURCE_FILE).read_text())["gguf"])
        if not recorded.is_file():
            raise UserError(f"{ref.spec} was dequantized from {recorded}, which is gone; its tokenizer is needed "
                            "to export: pull the model again (`kit models pull NAME --hf`)")
        source = recorded
    if source is not None and license_ == "unknown":
        license_ = _gguf_license(source) or _store_license(store, source) or license_
    name = spec if ref.kind in ("store", "hub") else Path(ref.spec).name.removesuffix(".gguf")
    return BaseModel(spec=spec, name=name, hf_path=ref.hf(store), source_gguf=source, license=license_)


def _gguf_license(path: Path) -> str | None:
    from export.gguf_tokenizer import read_gguf_metadata

    return read_gguf_metadata(path, ("general.license",)).get("general.license")


def _store_license(store: ModelStore, gguf: Path) -> str | None:
    for name, model in store.registry.items():
        if store.gguf_path(name) == gguf:
            return model.license
    return None


def load_base_tokenizer(base: BaseModel):
    """The original tokenizer: rebuilt from the source GGUF when there is one, else the base folder's."""
    from transformers import AutoTokenizer

    if base.source_gguf is not None:
        from export.gguf_tokenizer import tokenizer_from_gguf

        return tokenizer_from_gguf(base.source_gguf)
    return AutoTokenizer.from_pretrained(base.hf_path)


def merge_adapter(base: BaseModel, adapter: Path | None, out: Path) -> Path:
    """Base + adapter -> out/ (float32 safetensors, tokenizer, chat template, generation config)."""
    import torch
    from transformers import AutoModelForCausalLM

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(base.hf_path, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tokenizer = load_base_tokenizer(base)
    for key in ("bos", "eos", "pad"):
        token_id = getattr(tokenizer, f"{key}_token_id")
        if token_id is not None:
            setattr(model.config, f"{key}_token_id", token_id)
            setattr(model.generation_config, f"{key}_token_id", token_id)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(out, ignore_errors=True)
    partial.replace(out)
    return out
