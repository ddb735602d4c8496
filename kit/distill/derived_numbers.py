"""Derived numbers learned from the accepted samples, and the training answers that write them as arithmetic.

A JSON number field is derived when at least `MIN_SUPPORT` samples (and a tenth of those holding the field)
show it as a number of the request times the same factor other than 1 ("5 minutes" -> 300: factor 60). Its
factors are those any sample shows (1 included, for "45 seconds" -> 45; one "2 hours" -> 7200 is enough for
3600), most common first, at most `MAX_FACTORS`. In
the student's training answers such a value becomes the expression that makes it ("5 * 60",
"1 * 3600 + 30 * 60"); the runtime offers those expressions per request and works them out
(runtime.derived_numbers). The teacher's answers, the `output` column and every score stay plain numbers.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from itertools import combinations, product
from pathlib import Path
from typing import Any, Iterator

from kit.core.files import atomic_write_json
from runtime.derived_numbers import request_numbers, term

FILE = "derived_numbers.json"
MIN_SUPPORT = 2
MIN_SHARE = 0.1
MAX_FACTORS = 6


def _numbers_by_key(value: Any) -> Iterator[tuple[str, int | float]]:
    """(key, number) for every number under a key of an object, at any depth."""
    if isinstance(value, list):
        for item in value:
            yield from _numbers_by_key(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                yield key, item
            else:
                yield from _numbers_by_key(item)


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def learn(samples: list[dict[str, Any]]) -> dict[str, list[int | float]]:
    """{field: factors} for the derived number fields of `samples` (rows with `input` and JSON `output` text)."""
    support: dict[str, Counter] = defaultdict(Counter)
    holding: Counter = Counter()
    for sample in samples:
        answer = _parsed(sample.get("output"))
        if answer is None:
            continue
        numbers = [n for n in request_numbers(str(sample.get("input", ""))) if n > 0]
        for key, value in _numbers_by_key(answer):
            holding[key] += 1
            factors = {_whole(value / n) for n in numbers if value > 0}
            for factor in factors - {None}:
                support[key][factor] += 1
    fields = {}
    for key, counts in support.items():
        floor = max(MIN_SUPPORT, MIN_SHARE * holding[key])
        if any(f != 1 and count >= floor for f, count in counts.items()):
            fields[key] = [f for f, _ in counts.most_common(MAX_FACTORS)]
    return dict(sorted(fields.items()))


def _whole(ratio: float) -> int | None:
    """A factor: a whole number of at least 1 (a ratio within rounding of one)."""
    nearest = round(ratio)
    return int(nearest) if nearest >= 1 and abs(ratio - nearest) < 1e-9 * max(1.0, ratio) else None


def expression_for(value: int | float, numbers: list[int | float], factors: list[int | float]) -> str | None:
    """The first expression over the request's numbers that makes `value`: one term (factors in order of
    support), else two terms over two numbers in their request order; None when none does."""
    for number, factor in product(numbers, factors):
        if abs(number * factor - value) < 1e-9:
            return term(number, factor)
    for (a, b), (fa, fb) in product(combinations(numbers, 2), product(factors, factors)):
        if not (fa == 1 and fb == 1) and abs(a * fa + b * fb - value) < 1e-9:
            return f"{term(a, fa)} + {term(b, fb)}"
    return None


def student_answer(input_text: str, output: str, fields: dict[str, list[int | float]]) -> str:
    """The training answer: `output` with each derived number it can explain written as its expression (the
    answer as it was when nothing changes)."""
    answer = _parsed(output)
    if not fields or answer is None:
        return output
    numbers = request_numbers(input_text)
    if not numbers:
        return output
    rewritten = _rewrite(answer, fields, numbers)
    if rewritten == answer:
        return output
    return json.dumps(rewritten, ensure_ascii=False, separators=(",", ":"))


def _rewrite(value: Any, fields: dict[str, list[int | float]], numbers: list[int | float]) -> Any:
    if isinstance(value, list):
        return [_rewrite(item, fields, numbers) for item in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        if key in fields and isinstance(item, (int, float)) and not isinstance(item, bool):
            out[key] = expression_for(item, numbers, fields[key]) or item
        else:
            out[key] = _rewrite(item, fields, numbers)
    return out


def write(folder: Path, fields: dict[str, list[int | float]]) -> Path:
    return atomic_write_json(folder / FILE, fields)


def read(folder: Path | None) -> dict[str, list[int | float]]:
    """The derived fields a data stage wrote into `folder` ({} when it wrote none)."""
    if folder is None:
        return {}
    try:
        data = json.loads((Path(folder) / FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
