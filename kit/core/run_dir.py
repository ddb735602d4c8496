"""The run directory layout: runs/<recipe-name>/{data,train,export,eval,bundle}."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def for_task(cls, task_name: str, base: Path | str = "runs") -> "RunDir":
        return cls(Path(base) / task_name)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def dataset(self) -> Path:
        """HF DatasetDict (train / validation) saved with save_to_disk."""
        return self.data / "dataset"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def adapter(self) -> Path:
        return self.train / "adapter"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"
