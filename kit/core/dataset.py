"""The distilled dataset's shape, shared by the stage that writes it and the stages that read it: a
DatasetDict saved to disk with `train` and `validation` splits whose rows carry a `messages` conversation, and
beside them `derived_values.json`, the rules the training answers follow where they write a value in the
student's own form (kit.distill.derived_values): export puts them in the bundle, eval and probe decode with them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kit.core.errors import UserError
from kit.core.files import fingerprint

SPLITS = ("train", "validation")
DERIVED_VALUES = "derived_values.json"
Messages = list[dict[str, str]]


def with_system_prompt(messages: Messages, system: str | None) -> Messages:
    """The conversation with its system message replaced by `system` (dropped when None)."""
    rest = [m for m in messages if m.get("role") != "system"]
    return ([{"role": "system", "content": system}] if system else []) + rest


def no_derived_values() -> dict[str, Any]:
    """The derived values of a dataset that has none (kit.distill.derived_values learns them)."""
    return {"derived_numbers": {}, "unit_factors": {}, "clock_fields": [], "no_repeat_fields": [],
            "copy_stop_words": {}, "named_choices": {}}


def derived_values(dataset: Path | None) -> dict[str, Any]:
    """{"derived_numbers": {...}, "unit_factors": {...}, "clock_fields": [...], "no_repeat_fields": [...],
    "copy_stop_words": {...}, "named_choices": {...}} of a saved dataset (empty parts when it has none)."""
    empty = no_derived_values()
    if dataset is None:
        return empty
    try:
        data = json.loads((Path(dataset) / DERIVED_VALUES).read_text())
    except (OSError, ValueError):
        return empty
    return {**empty, **{k: v for k, v in data.items() if k in empty}} if isinstance(data, dict) else empty


def dataset_fingerprint(path: Path) -> str:
    """Content hash of a saved DatasetDict, ignoring the `cache-*.arrow` files `datasets` may add beside it."""
    return fingerprint(path, skip_prefixes=("cache-",))


def load_dataset_dict(path: Path):
    """The distillation stage's DatasetDict (train / validation), with the fix named when it is missing."""
    from datasets import DatasetDict, load_from_disk  # lazy: datasets pulls in pyarrow and pandas

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"no dataset at {path}: run the generate stage first (`kit generate RECIPE`) "
                        "or save a DatasetDict with `train` and `validation` splits there")
    data = load_from_disk(str(path))
    if not isinstance(data, DatasetDict) or any(split not in data for split in SPLITS):
        raise UserError(f"{path} must hold a DatasetDict with splits {SPLITS}; found {list(getattr(data, 'keys', list)())}")
    for split in SPLITS:
        if len(data[split]) == 0:
            raise UserError(f"the {split} split at {path} is empty: distill more samples (data.target_samples)")
        if "messages" not in data[split].column_names:
            raise UserError(f"the {split} split at {path} has no `messages` column: re-run `kit generate`")
    return data
