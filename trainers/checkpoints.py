"""Checkpoints of one training run: find the last complete one; start over when the run changed."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

BEST_WEIGHTS = "best_weights.pt"  # in every checkpoint: the best evaluation's weights so far (KeepBestWeights)

RUN_KEY_FILE = "run_key.json"
INITIAL_EVAL_FILE = "initial_eval.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest `checkpoint-N` whose trainer state was fully written (a kill -9 can interrupt a save)."""
    found = []
    for path in Path(folder).glob("checkpoint-*"):
        match = _CHECKPOINT.match(path.name)
        if match and _is_complete(path):
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def _is_complete(path: Path) -> bool:
    state = path / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return False
    # the best weights so far are written last (trainers.callbacks.KeepBestWeights.on_save)
    return all((path / name).is_file() for name in ("optimizer.pt", "scheduler.pt", BEST_WEIGHTS))


def claim(folder: Path, run_key: str) -> bool:
    """Make `folder` hold checkpoints of this run only; True when earlier checkpoints of it are there to resume."""
    folder = Path(folder)
    marker = folder / RUN_KEY_FILE
    if marker.is_file() and json.loads(marker.read_text()).get("key") == run_key:
        return last_complete_checkpoint(folder) is not None
    if folder.exists():
        print(f"train: config, data or base model changed since the checkpoints in {folder} were written; starting over")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"key": run_key}) + "\n")
    return False


def read_initial_eval(folder: Path) -> dict | None:
    path = Path(folder) / INITIAL_EVAL_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_initial_eval(folder: Path, metrics: dict) -> None:
    (Path(folder) / INITIAL_EVAL_FILE).write_text(json.dumps(metrics) + "\n")
