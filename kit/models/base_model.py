"""The one base-model resolver: what a recipe names as the student (or a teacher) becomes a transformers-
loadable path, the GGUF it came from (its tokenizer is the truth), its license and a content hash."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from kit.core.errors import UserError
from kit.core.files import fingerprint
from kit.models.gguf_tokenizer import read_gguf_metadata
from kit.models.reference import ModelRef, resolve_model
from kit.models.store import HF_SOURCE_FILE, ModelStore


@dataclass(frozen=True)
class BaseModel:
    """A resolved base model: enough to load it, check it is the same weights again, and credit it."""

    spec: str  # as the recipe names it
    kind: str  # store | gguf | hf_dir | hub
    name: str  # short display name (store name, hub id, or file / folder name)
    hf_path: str  # the transformers-loadable folder or hub id
    source_gguf: Path | None  # the GGUF the HF folder was dequantized from, if any
    license: str

    @cached_property
    def sha256(self) -> str:
        """Of the source GGUF (recorded when it was dequantized), of the HF folder's files, or the hub id."""
        source = Path(self.hf_path) / HF_SOURCE_FILE
        if source.is_file():
            return json.loads(source.read_text())["sha256"]
        if Path(self.hf_path).is_dir():
            return fingerprint(Path(self.hf_path))
        return "hub:" + self.spec

    def identity(self) -> dict[str, str]:
        """What an adapter records about its base (base_model.json)."""
        return {"spec": self.spec, "kind": self.kind, "path": self.hf_path, "sha256": self.sha256}


BASE_MODEL_FILE = "base_model.json"  # the train stage writes base.identity() here, beside its adapter


def is_full_model(folder: Path) -> bool:
    """True for a fully fine-tuned model folder (train.method: full), False for a peft adapter folder."""
    return not (folder / "adapter_config.json").is_file() and (folder / "config.json").is_file()


def resolve_base(spec: str, store: ModelStore | None = None) -> BaseModel:
    """Resolve a store name, GGUF, HF folder or hub id to an HF path plus the GGUF it derives from."""
    store = store or ModelStore()
    ref = resolve_model(spec, store)
    source, license_ = _source_gguf(ref, store), "unknown"
    if ref.kind == "store":
        license_ = store.model(spec).license
    if source is not None and license_ == "unknown":
        license_ = _gguf_license(source) or _store_license(store, source) or license_
    name = spec if ref.kind in ("store", "hub") else Path(ref.spec).name.removesuffix(".gguf")
    return BaseModel(spec=spec, kind=ref.kind, name=name, hf_path=ref.hf(store), source_gguf=source, license=license_)


def _source_gguf(ref: ModelRef, store: ModelStore) -> Path | None:
    if ref.kind == "store":
        return ref.gguf(store)
    if ref.kind == "gguf":
        return Path(ref.spec)
    if ref.kind == "hf_dir" and (Path(ref.spec) / HF_SOURCE_FILE).is_file():
        recorded = Path(json.loads((Path(ref.spec) / HF_SOURCE_FILE).read_text())["gguf"])
        if not recorded.is_file():
            raise UserError(f"{ref.spec} was dequantized from {recorded}, which is gone; its tokenizer is needed "
                            "to export: pull the model again (`kit models pull NAME --hf`)")
        return recorded
    return None


def _gguf_license(path: Path) -> str | None:
    return read_gguf_metadata(path, ("general.license",)).get("general.license")


def _store_license(store: ModelStore, gguf: Path) -> str | None:
    for name, model in store.registry.items():
        if store.gguf_path(name) == gguf:
            return model.license
    return None
