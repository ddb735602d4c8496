"""The stage contract and stage manifests.

Every stage is `run(config, run_dir) -> StageManifest`: it reads a typed config, writes its outputs and a
`manifest.json` (config, inputs' content hashes, outputs, figures) into its folder of the run directory.
Whether a stage is up to date is decided here, once, for every stage: its manifest was written for exactly
this config and these inputs, and every output it lists is still there.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel
from rich.console import Console

from kit.core.files import atomic_write_json, fingerprint
from kit.core.fresh_process import call_in_fresh_process
from kit.core.run_dir import RunDir
from kit.core.version import __version__

__all__ = ["STAGE_MANIFEST", "Stage", "StageManifest", "StagePlan", "config_dict", "fingerprint",
           "read_stage_manifest", "run_stage", "up_to_date", "write_stage_manifest"]

STAGE_MANIFEST = "manifest.json"
ConfigT = TypeVar("ConfigT", contravariant=True)
console = Console(stderr=True)


@dataclass
class StageManifest:
    stage: str  # "generate" | "train" | "export" | "eval"
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


@dataclass(frozen=True)
class StagePlan:
    """What decides a stage's outputs (its config record and its inputs' hashes), worked out before it runs.
    `context` carries what planning resolved (a base model, the targets) to the run; it is not hashed."""

    config: dict[str, Any]
    inputs: dict[str, str]
    context: dict[str, Any] = field(default_factory=dict)

    def manifest(self, stage: str, **rest: Any) -> StageManifest:
        return StageManifest(stage=stage, config=self.config, inputs=self.inputs, **rest)


class Stage(Protocol, Generic[ConfigT]):
    """One stage of the pipeline: where it writes, what decides its outputs, and the work itself."""

    name: str

    def folder(self, run_dir: RunDir) -> Path: ...

    def plan(self, config: ConfigT, run_dir: RunDir) -> StagePlan: ...

    def make(self, config: ConfigT, run_dir: RunDir, plan: StagePlan, **options: Any) -> StageManifest: ...


def run_stage(stage: Stage[ConfigT], config: ConfigT, run_dir: RunDir, *, force: bool = False,
              fresh_process: bool = False, **options: Any) -> StageManifest:
    """Run `stage` unless it is up to date (then its recorded manifest is returned); `options` (progress bars,
    threads) change how it runs, not what it makes, and go to `make` only. With `fresh_process` the work runs in
    a process of its own (kit.core.fresh_process); deciding whether it is up to date does not."""
    plan = stage.plan(config, run_dir)
    if not force and (done := up_to_date(stage, run_dir, plan)) is not None:
        console.print(f"{stage.name} is up to date in {stage.folder(run_dir)}")
        return done
    if fresh_process:
        return call_in_fresh_process(stage.make, config, run_dir, plan, **options)
    return stage.make(config, run_dir, plan, **options)


def up_to_date(stage: Stage[Any], run_dir: RunDir, plan: StagePlan) -> StageManifest | None:
    """The recorded manifest when it was written for exactly this plan and its outputs are all there."""
    folder = stage.folder(run_dir)
    recorded = read_stage_manifest(folder)
    if recorded is None or recorded.key != plan.manifest(stage.name).key:
        return None
    if any(not (folder / output).exists() for output in recorded.outputs.values()):
        return None
    return recorded


def config_dict(config: BaseModel | dict[str, Any]) -> dict[str, Any]:
    return config.model_dump(mode="json", by_alias=True) if isinstance(config, BaseModel) else config


def write_stage_manifest(folder: Path, manifest: StageManifest) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest.finished = manifest.finished or time.time()
    return atomic_write_json(folder / STAGE_MANIFEST, asdict(manifest) | {"key": manifest.key}, default=str,
                             ensure_ascii=True)


def read_stage_manifest(folder: Path) -> StageManifest | None:
    path = Path(folder) / STAGE_MANIFEST
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    data.pop("key", None)
    return StageManifest(**data)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
