"""Resolve what a user names as a model: a store name, a local GGUF, a local HF folder or an HF id."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kit.core import settings
from kit.core.errors import UserError
from kit.models.store import HF_SOURCE_FILE, ModelStore, dequantize_gguf_to_hf, sha256_file

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelRef:
    spec: str
    kind: Literal["store", "gguf", "hf_dir", "hub"]

    def gguf(self, store: ModelStore | None = None) -> Path:
        """A GGUF file for llama.cpp (store models are pulled on first use)."""
        if self.kind == "store":
            return (store or ModelStore()).pull(self.spec)
        if self.kind == "gguf":
            return Path(self.spec)
        raise UserError(f"'{self.spec}' is not a GGUF; llama.cpp needs a .gguf file or a model-store name "
                        "(convert HF models with `kit export`)")

    def hf(self, store: ModelStore | None = None) -> str:
        """A path or hub id that transformers' from_pretrained accepts (GGUFs are dequantized once)."""
        if self.kind == "store":
            return str((store or ModelStore()).pull_hf(self.spec))
        if self.kind == "gguf":
            gguf = Path(self.spec)
            digest = sha256_file(gguf)
            out = settings.models_dir() / f"{gguf.stem}-{digest[:12]}-hf"
            if not (out / HF_SOURCE_FILE).exists():
                dequantize_gguf_to_hf(gguf, out, sha256=digest)
            return str(out)
        return self.spec


def resolve_model(spec: str, store: ModelStore | None = None) -> ModelRef:
    store = store or ModelStore()
    if spec in store.registry:
        return ModelRef(spec, "store")
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelRef(str(path.resolve()), "gguf")
    if path.is_dir() and (path / "config.json").is_file():
        return ModelRef(str(path.resolve()), "hf_dir")
    if path.exists():
        raise UserError(f"'{spec}' is neither a .gguf file nor a Hugging Face folder (config.json missing)")
    if HUB_ID.match(spec):
        return ModelRef(spec, "hub")
    known = ", ".join(sorted(store.registry))
    raise UserError(f"unknown model '{spec}': use a store name ({known}), a .gguf path, an HF folder or an HF id")
