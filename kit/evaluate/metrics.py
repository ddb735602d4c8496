"""Task metrics on (prediction, gold) pairs: generic over output formats, no task names."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any, Callable

from kit.evaluate.config import EvaluateConfig

_FENCE = re.compile(r"```(?:[a-zA-Z0-9_+-]*)\n(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any:
    """The first JSON value in a model's reply (inside a code fence or bare); raises ValueError if none."""
    fenced = _FENCE.search(text)
    candidates = [fenced.group(1)] if fenced else []
    candidates.append(text)
    decoder = json.JSONDecoder()
    for candidate in candidates:
        for start, char in enumerate(candidate):
            if char in "{[":
                try:
                    return decoder.raw_decode(candidate[start:])[0]
                except json.JSONDecodeError:
                    continue
    raise ValueError("no JSON value found")


def extract_code(text: str) -> str:
    """The code in a reply: the first fenced block if any, else the whole text."""
    fenced = _FENCE.search(text)
    return (fenced.group(1) if fenced else text).strip()


def normalize_text(text: str) -> str:
    return " ".join(text.strip().lower().split()).rstrip(".;")


def _as_json(value: Any) -> Any:
    if isinstance(value, str):
        return extract_json(value)
    return value


def default_metrics(recipe: EvaluateConfig) -> list[str]:
    if recipe.eval.metrics:
        return list(recipe.eval.metrics)
    fmt = recipe.output.format
    if fmt == "json":
        has_schema = recipe.output.json_schema is not None or recipe.output.schema_file is not None
        return ["json_valid"] + (["json_schema_valid"] if has_schema else []) + ["json_fields", "exact_match"]
    if fmt == "sql":
        return ["execution_accuracy", "exact_match"]
    if fmt == "python":
        return ["pass_rate"]
    return ["exact_match", "contains"]


def json_valid(prediction: str, gold: Any) -> float:
    try:
        extract_json(prediction)
        return 1.0
    except ValueError:
        return 0.0


def exact_match(prediction: str, gold: Any, fmt: str) -> float:
    if fmt == "json":
        try:
            return float(_as_json(prediction) == _as_json(gold))
        except ValueError:
            return 0.0
    if fmt in ("sql", "python"):
        return float(normalize_text(extract_code(prediction)) == normalize_text(str(gold)))
    return float(normalize_text(prediction) == normalize_text(str(gold)))


def json_fields(prediction: str, gold: Any) -> dict[str, float]:
    """Per top-level key of the gold object: 1 if the prediction has the same value there."""
    gold_value = _as_json(gold)
    try:
        predicted = _as_json(prediction)
    except ValueError:
        predicted = None
    if not isinstance(gold_value, dict):
        return {"value": float(predicted == gold_value)}
    predicted = predicted if isinstance(predicted, dict) else {}
    return {key: float(predicted.get(key, object()) == value) for key, value in gold_value.items()}


def contains(prediction: str, gold: Any) -> float:
    return float(normalize_text(str(gold)) in normalize_text(prediction))


def schema_validator(schema: dict[str, Any]) -> Callable[[str], float]:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)

    def score(prediction: str) -> float:
        try:
            return float(validator.is_valid(extract_json(prediction)))
        except ValueError:
            return 0.0

    return score


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    totals: Counter[str] = Counter()
    for row in rows:
        totals.update(row)
    return {key: totals[key] / len(rows) for key in totals} if rows else {}
