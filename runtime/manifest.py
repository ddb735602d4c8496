"""The bundle manifest: what a bundle carries so the runtime can use it (read and written as JSON).

Shared by export/ (writer) and runtime/ (reader); standard library only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtime.files import atomic_write_text, sha256_file

MANIFEST_NAME = "manifest.json"
FORMAT = "microkit-bundle/1"


class BundleError(Exception):
    """A bundle that cannot be used as it is (missing file, wrong hash, unknown format); says the fix."""


@dataclass
class BundleFile:
    path: str  # relative to the bundle folder, POSIX separators
    sha256: str
    size: int
    kind: str  # "gguf" | "onnx" | "onnx-data" | "tokenizer" | "config" | "other"
    quant: str | None = None  # "F16", "Q4_K_M", "fp32", "int8", "int4", ...


@dataclass
class GenerationDefaults:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 40
    repeat_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)


@dataclass
class Manifest:
    name: str
    version: str = "0.1.0"
    task: str = ""
    base_model: dict[str, Any] = field(default_factory=dict)  # {"name": ..., "license": ...}
    system_prompt: str | None = None
    chat_template: str | None = None
    output_format: str = "text"  # text | json | sql | python
    output_schema: dict[str, Any] | None = None
    copy_fields: list[str] = field(default_factory=list)  # JSON keys decoded as spans of the request
    # {JSON key: words}: a copied span made of nothing but these words is not offered (runtime.copy_fields)
    copy_stop_words: dict[str, list[str]] = field(default_factory=dict)
    # {JSON key: choices}: an enum field narrowed to the one of these a request names alone (named_choices)
    named_choices: dict[str, list[str]] = field(default_factory=dict)
    # {JSON key: factors}: numbers the model writes as arithmetic over the request's numbers (derived_numbers)
    derived_numbers: dict[str, list[int | float]] = field(default_factory=dict)
    # {JSON key: {unit word: factor}}: a request number written with such a word is offered with that factor only
    unit_factors: dict[str, dict[str, int | float]] = field(default_factory=dict)
    clock_fields: list[str] = field(default_factory=list)  # 24-hour "HH:MM" keys copied as the request's times
    # string keys dropped where they repeat the words a derived value beside them was made from (answer_rules)
    no_repeat_fields: list[str] = field(default_factory=list)
    # {"adapter": file, "base": file, ...}: a LoRA adapter GGUF and the unmerged base it applies to (served
    # several experts to one base by `Expert.load_many` / `kit serve A B`); empty when the bundle has none
    lora_adapter: dict[str, Any] = field(default_factory=dict)
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)
    files: list[BundleFile] = field(default_factory=list)
    verification: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    microkit_version: str = ""
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        if data.get("format") != FORMAT:
            raise BundleError(f"unknown bundle format {data.get('format')!r} (expected {FORMAT}); re-export it")
        data = dict(data)
        data["generation"] = GenerationDefaults(**data.get("generation", {}))
        data["files"] = [BundleFile(**f) for f in data.get("files", [])]
        return cls(**data)

    def files_of_kind(self, kind: str) -> list[BundleFile]:
        return [f for f in self.files if f.kind == kind]


def describe_file(bundle_dir: Path, path: Path, kind: str, quant: str | None = None) -> BundleFile:
    """A manifest entry for a file inside the bundle folder (hash and size measured now)."""
    return BundleFile(path=path.relative_to(bundle_dir).as_posix(), sha256=sha256_file(path),
                      size=path.stat().st_size, kind=kind, quant=quant)


def write_manifest(bundle_dir: Path, manifest: Manifest) -> Path:
    out = Path(bundle_dir) / MANIFEST_NAME
    return atomic_write_text(out, manifest.to_json() + "\n")


def read_manifest(bundle_dir: Path) -> Manifest:
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{bundle_dir} has no {MANIFEST_NAME}: pass a bundle folder made by `kit export`, or a .gguf / ONNX folder")
    try:
        return Manifest.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as err:
        raise BundleError(f"{path} is not a valid manifest ({err}); re-export the bundle") from None


def verify_files(bundle_dir: Path, manifest: Manifest) -> None:
    """Check every listed file exists with the recorded size and sha256."""
    for entry in manifest.files:
        path = Path(bundle_dir) / entry.path
        if not path.is_file():
            raise BundleError(f"bundle file missing: {path}; copy the whole bundle folder again")
        if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            raise BundleError(f"bundle file changed or corrupt: {path} (sha256 mismatch); copy the bundle again")
