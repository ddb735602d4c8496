"""Value swaps: more training rows from the accepted JSON samples at no teacher cost.

A value the answer copies from the request word for word (a city, a name, a message text, a volume level, an
on/off state) is exchanged, in the request and in the answer together, for the value the same field holds in
another sample, where it was copied word for word too. "weather in Oslo tomorrow" -> {"city": "Oslo", ...}
becomes "weather in Lima tomorrow" -> {"city": "Lima", ...}. A small student trained on a few hundred rows
otherwise memorizes the values it saw ("city": "Paris" for every forecast); with swaps it has to copy them.

Only values that occur exactly once in their request, as whole words, and apart from every other swapped
value, are exchanged. A whole number the answer derives from the only number in the request by a constant
factor ("5 minutes" -> 300, "2 hours" -> 7200) is exchanged with that factor kept ("8 minutes" -> 480), when at
least two samples show the same field with the same factor; whole numbers are drawn (log-uniformly) from the range
the samples span, so the student sees more of the pairs it has to learn. Other derived values ("6pm" -> "18:00") are left
as they are. Each new row passes the recipe's checks that cost no teacher call (the
schema, grounding, decontamination against the eval set, execution) before it joins the training split.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterator

Path_ = tuple[str, ...]  # where a value sits in the answer: keys, "[]" for any list item
SWAP_TAG = "~swap"


# a whole number written in a request: not part of a word, a decimal, a clock time, a date or a path
NUMBER = re.compile(r"(?<![\w.:/-])\d+(?![\w.:/]|-\d)")


@dataclass(frozen=True)
class Slot:
    """One value of an answer found once in the request: word for word (factor 1), or as the whole number it
    is `factor` times."""

    leaf: int  # its number in `leaves` order
    path: Path_
    written: str | int | float  # what the request holds
    start: int
    end: int
    factor: int = 1

    @property
    def pool_key(self) -> tuple[Path_, str, int]:
        return self.path, type(self.written).__name__, self.factor

    def answer_for(self, written: str | int | float) -> str | int | float:
        return written * self.factor if self.factor != 1 else written


def is_scalar(value: Any) -> bool:
    """A string or number (booleans and nulls are not values a request spells out)."""
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def leaves(value: Any, path: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    """Every scalar of a JSON value with its path."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, (*path, str(key)))
    elif isinstance(value, list):
        for item in value:
            yield from leaves(item, (*path, "[]"))
    elif is_scalar(value):
        yield path, value


def spelled(value: str | int | float) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def slots(text: str, answer: Any) -> list[Slot]:
    """The answer's values that occur exactly once in `text` as whole words (or whole numbers, or as a multiple
    of the request's only number) and overlap no other such value."""
    found = []
    numbers = [(int(m.group()), m.span()) for m in NUMBER.finditer(text)]
    for leaf, (path, value) in enumerate(leaves(answer)):
        word = spelled(value).strip()
        if not word:
            continue
        if isinstance(value, str):
            hits = [m.span() for m in re.finditer(rf"(?<!\w){re.escape(word)}(?!\w)", text)]
        else:
            hits = [span for number, span in numbers if number == value]
        if len(hits) == 1:
            found.append(Slot(leaf, path, value, *hits[0]))
        elif not hits and isinstance(value, int) and len(numbers) == 1 and numbers[0][0] > 0 \
                and value % numbers[0][0] == 0 and value // numbers[0][0] > 1:
            number, span = numbers[0]
            found.append(Slot(leaf, path, number, *span, factor=value // number))
    return [s for s in found if not any(o is not s and o.start < s.end and s.start < o.end for o in found)]


def replace_leaves(value: Any, new: dict[int, Any]) -> Any:
    """A copy of `value` with its scalars, numbered in `leaves` order, replaced where `new` has their number."""
    counter = iter(range(1 << 30))

    def walk(item: Any) -> Any:
        if isinstance(item, dict):
            return {k: walk(v) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v) for v in item]
        if is_scalar(item):
            return new.get(next(counter), item)
        return item

    return walk(value)


@dataclass(frozen=True)
class Swap:
    """A new training row and the sample it was made from."""

    source_id: str
    number: int
    input: str
    answer: Any

    @property
    def id(self) -> str:
        return f"{self.source_id}{SWAP_TAG}{self.number}"


def whole_numbers(values: list[Any]) -> list[Any] | range:
    """A field's values to draw from: whole numbers span the range between the smallest and largest seen."""
    if len(values) > 1 and all(is_scalar(v) and isinstance(v, int) for v in values):
        return range(min(values), max(values) + 1)
    return values


def pick(rng: random.Random, values: list[Any] | range, current: Any) -> Any:
    """Another value than `current` (the pools hold at least two). Whole numbers are drawn log-uniformly over
    their range, as people write them: small ones often ("5 minutes"), large ones now and then."""
    while True:
        if isinstance(values, range):
            low, high = math.log(values.start + 1), math.log(values.stop)
            choice = min(values.stop - 1, max(values.start, round(math.exp(rng.uniform(low, high))) - 1))
        else:
            choice = rng.choice(values)
        if choice != current:
            return choice


def value_swaps(samples: list[dict[str, Any]], per_sample: int, seed: int = 0) -> list[Swap]:
    """Up to `per_sample` new rows for each sample (`id`, `input` text, `value`: the parsed JSON answer): every
    swappable value exchanged for another one the same field holds elsewhere. Deterministic for a seed; no two
    rows (old or new) share an input."""
    if per_sample <= 0:
        return []
    found = {s["id"]: slots(s["input"], s["value"]) for s in samples}
    pool: dict[tuple[Path_, str, int], list[Any]] = defaultdict(list)
    for sample in samples:
        for slot in found[sample["id"]]:
            if slot.written not in pool[slot.pool_key]:
                pool[slot.pool_key].append(slot.written)
    pool = {key: whole_numbers(values) for key, values in pool.items()}
    seen = {s["input"] for s in samples}
    swaps = []
    for sample in samples:
        usable = [s for s in found[sample["id"]] if len(pool[s.pool_key]) > 1]
        if not usable:
            continue
        for number in range(1, per_sample + 1):
            rng = random.Random(f"{seed}:{sample['id']}:{number}")
            text, new = sample["input"], {}
            for slot in sorted(usable, key=lambda s: s.start, reverse=True):  # right to left: spans stay valid
                written = pick(rng, pool[slot.pool_key], slot.written)
                new[slot.leaf] = slot.answer_for(written)
                text = text[:slot.start] + spelled(written) + text[slot.end:]
            answer = replace_leaves(sample["value"], new)
            if text in seen:
                continue
            seen.add(text)
            swaps.append(Swap(sample["id"], number, text, answer))
    return swaps
