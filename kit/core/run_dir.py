"""The run directory layout: runs/<recipe-name>/{data,train,probe,export,eval,bundle}.

With failure-driven rounds (`data.rounds` > 1) every round but the last has a run directory of its own under
rounds/<n>/ (its data, train and probe folders); the last round uses the top-level ones, so data/dataset and
train/adapter are always what the export reads."""

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
    def probe(self) -> Path:
        """The round's probe: the student's answers to held-out teacher-labelled inputs, and its failures."""
        return self.root / "probe"

    def round(self, number: int, rounds: int) -> "RunDir":
        """The run directory of round `number` of `rounds` (the last round is this one)."""
        return self if number >= rounds else RunDir(self.root / "rounds" / str(number))

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"
