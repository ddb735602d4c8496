"""Value swaps: more training rows from the accepted JSON samples at no teacher cost.

A value the answer copies from the request word for word (a city, a name, a message text, a volume level, an
on/off state) is exchanged, in the request and in the answer together, for the value the same field holds in
another sample, where it was copied word for word too. "weather in Oslo tomorrow" -> {"city": "Oslo", ...}
becomes "weather in Lima tomorrow" -> {"city": "Lima", ...}. A small student trained on a few hundred rows
otherwise memorizes the values it saw ("city": "Paris" for every forecast); with swaps it has to copy them.

Only values that occur exactly once in their request, as whole words, and apart from every other swapped
value, are exchanged; values the answer derives from the request ("5 minutes" -> 300) never occur in it word
for word, so they are left as they are. Each new row passes the recipe's checks that cost no teacher call (the
schema, grounding, decontamination against the eval set, execution) before it joins the training split.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterator

Path_ = tuple[str, ...]  # where a value sits in the answer: keys, "[]" for any list item
SWAP_TAG = "~swap"


@dataclass(frozen=True)
class Slot:
    """One value of an answer found once, as whole words, in the request."""

    leaf: int  # its number in `leaves` order
    path: Path_
    value: str | int | float
    start: int
    end: int

    @property
    def pool_key(self) -> tuple[Path_, str]:
        return self.path, type(self.value).__name__


def leaves(value: Any, path: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    """Every scalar of a JSON value with its path (booleans and nulls are not values a request spells out)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, (*path, str(key)))
    elif isinstance(value, list):
        for item in value:
            yield from leaves(item, (*path, "[]"))
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        yield path, value


def spelled(value: str | int | float) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def slots(text: str, answer: Any) -> list[Slot]:
    """The answer's values that occur exactly once in `text` as whole words and overlap no other such value."""
    found = []
    for leaf, (path, value) in enumerate(leaves(answer)):
        word = spelled(value).strip()
        if not word:
            continue
        hits = [m.span() for m in re.finditer(rf"(?<!\w){re.escape(word)}(?!\w)", text)]
        if len(hits) == 1:
            found.append(Slot(leaf, path, value, *hits[0]))
    apart = [s for s in found if not any(o is not s and o.start < s.end and s.start < o.end for o in found)]
    return apart


def replace_leaves(value: Any, new: dict[int, Any]) -> Any:
    """A copy of `value` with its scalars, numbered in `leaves` order, replaced where `new` has their number."""
    counter = iter(range(1 << 30))

    def walk(item: Any) -> Any:
        if isinstance(item, dict):
            return {k: walk(v) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v) for v in item]
        if isinstance(item, (str, int, float)) and not isinstance(item, bool):
            number = next(counter)
            return new.get(number, item)
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


def value_swaps(samples: list[dict[str, Any]], per_sample: int, seed: int = 0) -> list[Swap]:
    """Up to `per_sample` new rows for each sample (`id`, `input` text, `value`: the parsed JSON answer): every
    swappable value exchanged for another one the same field holds elsewhere. Deterministic for a seed; no two
    rows (old or new) share an input."""
    if per_sample <= 0:
        return []
    found = {s["id"]: slots(s["input"], s["value"]) for s in samples}
    pool: dict[tuple[Path_, str], list[Any]] = defaultdict(list)
    for sample in samples:
        for slot in found[sample["id"]]:
            if slot.value not in pool[slot.pool_key]:
                pool[slot.pool_key].append(slot.value)
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
                new[slot.leaf] = rng.choice([v for v in pool[slot.pool_key] if v != slot.value])
                text = text[:slot.start] + spelled(new[slot.leaf]) + text[slot.end:]
            answer = replace_leaves(sample["value"], new)
            if text in seen:
                continue
            seen.add(text)
            swaps.append(Swap(sample["id"], number, text, answer))
    return swaps
