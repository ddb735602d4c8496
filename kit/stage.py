"""Stage manifests: every stage writes `manifest.json` (inputs' hashes, config, figures) into its folder.

A stage whose recorded inputs and config match the current ones is up to date and may be skipped.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from kit import __version__

STAGE_MANIFEST = "manifest.json"


@dataclass
class StageManifest:
    stage: str  # "generate" | "train" | "export" | "eval" | "bundle"
    config: dict[str, Any]
    inputs: dict[str, str]  # name -> content hash (see fingerprint())
    outputs: dict[str, str] = field(default_factory=dict)  # name -> path relative to the stage folder
    figures: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    finished: float = 0.0
    microkit_version: str = __version__

    @property
    def key(self) -> str:
        return _digest({"stage": self.stage, "config": self.config, "inputs": self.inputs})


def config_dict(config: BaseModel | dict[str, Any]) -> dict[str, Any]:
    return config.model_dump(mode="json", by_alias=True) if isinstance(config, BaseModel) else config


def fingerprint(path: Path) -> str:
    """Content hash of a file or a folder (names + bytes), for stage inputs."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(file.relative_to(path if path.is_dir() else path.parent).as_posix().encode())
        with open(file, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def write_stage_manifest(folder: Path, manifest: StageManifest) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest.finished = manifest.finished or time.time()
    out = folder / STAGE_MANIFEST
    tmp = out.with_suffix(".json.partial")
    tmp.write_text(json.dumps(asdict(manifest) | {"key": manifest.key}, indent=2, default=str) + "\n")
    tmp.replace(out)
    return out


def read_stage_manifest(folder: Path) -> StageManifest | None:
    path = Path(folder) / STAGE_MANIFEST
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    data.pop("key", None)
    return StageManifest(**data)


def is_up_to_date(folder: Path, stage: str, config: BaseModel | dict[str, Any], inputs: dict[str, str]) -> bool:
    """True when the folder's manifest was written for exactly this config and these inputs."""
    recorded = read_stage_manifest(folder)
    wanted = StageManifest(stage=stage, config=config_dict(config), inputs=inputs)
    return recorded is not None and recorded.key == wanted.key


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
