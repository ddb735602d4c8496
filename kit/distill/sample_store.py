"""The distillation store: append-only samples.jsonl / rejected.jsonl (safe against kill -9) and the
HF dataset (train / validation) the trainer reads."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from kit.core.files import atomic_output

SAMPLES = "samples.jsonl"
REJECTED = "rejected.jsonl"
STATS = "stats.json"


def sample_id(input_text: str, output: str) -> str:
    """Stable id: the hash of the whitespace-normalized input and output."""
    normalized = f"{' '.join(input_text.split())}\x00{' '.join(output.split())}"
    return hashlib.sha256(normalized.encode()).hexdigest()[:16]


class JsonlLog:
    """An append-only JSON-lines file; each record is one write + fsync, and a torn last line (from a
    kill in the middle of a write) is cut off when the file is opened again."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = self._read_and_repair()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _read_and_repair(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        keep = data[: data.rfind(b"\n") + 1]  # only whole lines count
        if len(keep) != len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(len(keep))
        return [json.loads(line) for line in keep.decode("utf-8").splitlines() if line.strip()]

    def append(self, row: dict[str, Any]) -> None:
        os.write(self._fd, (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        os.fsync(self._fd)
        self.rows.append(row)

    def close(self) -> None:
        os.close(self._fd)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The whole lines of a JSON-lines file, read only (a torn last line is skipped); [] when it is missing."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    keep = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in keep.decode("utf-8").splitlines() if line.strip()]


class SampleStore:
    def __init__(self, folder: Path):
        self.folder = folder
        self.samples = JsonlLog(folder / SAMPLES)
        self.rejected = JsonlLog(folder / REJECTED)
        self.ids = {row["id"] for row in self.samples.rows}
        self.done = {row["index"] for row in self.samples.rows + self.rejected.rows}

    @property
    def accepted(self) -> int:
        return len(self.samples.rows)

    def add_sample(self, row: dict[str, Any]) -> None:
        self.samples.append(row)
        self.ids.add(row["id"])
        self.done.add(row["index"])

    def add_rejection(self, row: dict[str, Any]) -> None:
        self.rejected.append(row)
        self.done.add(row["index"])

    def close(self) -> None:
        self.samples.close()
        self.rejected.close()


def dataset_row(sample: dict[str, Any], system_prompt: str,
                answer: Callable[[str, str], str] | None = None) -> dict[str, Any]:
    """The row format the trainer reads: the assistant message holds the final answer only, as `answer(input,
    output)` writes it for the student when given (derived numbers as arithmetic); `output` stays the label."""
    text = sample["input"] if isinstance(sample["input"], str) else json.dumps(sample["input"], ensure_ascii=False)
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": text},
                {"role": "assistant", "content": answer(text, sample["output"]) if answer else sample["output"]}]
    return {"id": sample["id"], "input": text, "output": sample["output"], "reasoning": sample.get("reasoning") or "",
            "messages": messages}


def share_of(sample_id: str, seed: int) -> float:
    """Where a sample falls in [0, 1): a hash of the data seed and its id, so its place in the split never moves
    when other samples (a later round's) join."""
    return int(hashlib.sha256(f"{seed}:{sample_id}".encode()).hexdigest()[:8], 16) / 2 ** 32


def split_ids(ids: list[str], validation_fraction: float, seed: int) -> set[str]:
    """The validation ids: those whose share falls below the fraction (at least one of two or more)."""
    validation = {i for i in ids if share_of(i, seed) < validation_fraction}
    if validation_fraction > 0 and not validation and len(ids) >= 2:
        validation = {min(ids, key=lambda i: share_of(i, seed))}
    return validation


def probe_ids(ids: list[str], validation_fraction: float, probe_fraction: float, seed: int) -> set[str]:
    """The ids a round holds out as its probe pool: the next band of shares after validation's."""
    if probe_fraction <= 0:
        return set()
    top = validation_fraction + probe_fraction
    return {i for i in ids if validation_fraction <= share_of(i, seed) < top}


def write_dataset(samples: list[dict[str, Any]], out: Path, *, system_prompt: str, validation_fraction: float,
                  seed: int, extra_train: list[dict[str, Any]] = (), held_out: set[str] = frozenset(),
                  answer: Callable[[str, str], str] | None = None,
                  extra_files: dict[str, str] | None = None) -> dict[str, int]:
    """Save a DatasetDict with `train` and `validation` to `out` (replacing it whole). `extra_train` rows (the
    recipe's seeds) join the training split only; `held_out` ids (a round's probe pool) join neither; `answer`
    writes each row's training answer (dataset_row); `extra_files` (name -> text) are saved in the folder too."""
    from datasets import Dataset, DatasetDict, Features, List, Value

    features = Features({"id": Value("string"), "input": Value("string"), "output": Value("string"),
                         "reasoning": Value("string"),
                         "messages": List({"role": Value("string"), "content": Value("string")})})
    rows = [dataset_row(s, system_prompt, answer) for s in samples if s["id"] not in held_out]
    validation = split_ids([s["id"] for s in samples], validation_fraction, seed)
    seeds = [dataset_row(s, system_prompt, answer) for s in extra_train]
    parts = {"train": [r for r in rows if r["id"] not in validation] + seeds,
             "validation": [r for r in rows if r["id"] in validation]}
    dataset = DatasetDict({name: Dataset.from_list(part, features=features) for name, part in parts.items()})
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    quiet_before = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        with atomic_output(out) as tmp:
            dataset.save_to_disk(str(tmp))
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text, encoding="utf-8")
    finally:
        if not quiet_before:
            enable_progress_bars()
    return {name: len(part) for name, part in parts.items()}
