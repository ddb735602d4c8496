"""Self-consistency: several teacher answers to one input, one checked label out.

An answer without an execution oracle is trusted only when most of the teacher's answers agree on it. JSON
answers are voted field by field (at any depth): answers that agree on the tool but word one argument
differently still give a label, made of each field's majority value, while a field with no majority rejects the
sample and names the field. Text and SQL answers are voted whole, after normalizing (whitespace; SQL case and a
trailing semicolon).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from kit.distill.critic.base import Answer

_ABSENT = object()


@dataclass(frozen=True)
class Vote:
    answer: Answer | None  # the label (None: no majority)
    votes: int  # answers agreeing on the least agreed field (on the whole answer for text)
    reason: str = ""  # why there is no label


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _field_majority(values: list[Any], n: int, path: str) -> tuple[Any, int, str]:
    """The majority of `values` (dicts: key by key), the smallest agreement met, and the first field without a
    strict majority of all `n` answers ('' when every field has one)."""
    present = [v for v in values if v is not _ABSENT]
    if present and len(present) == len(values) and all(isinstance(v, dict) for v in values):
        keys = list(dict.fromkeys(k for v in values for k in v))
        out, least = {}, n
        for key in keys:
            sub = [v.get(key, _ABSENT) for v in values]
            value, agree, failed = _field_majority(sub, n, f"{path}.{key}" if path else key)
            if failed:
                return None, agree, failed
            least = min(least, agree)
            if value is not _ABSENT:
                out[key] = value
        return out, least, ""
    counts = Counter(_key(v) if v is not _ABSENT else "\x00absent" for v in values)
    best, agree = counts.most_common(1)[0]
    if agree * 2 <= n:
        return None, agree, path or "answer"
    winner = next(v for v in values if (_key(v) if v is not _ABSENT else "\x00absent") == best)
    return winner, agree, ""


def vote(answers: list[Answer], fmt: str, normalize) -> tuple[Vote, int | None]:
    """The label of `answers` and the index of an answer equal to it (None when the label is composed field by
    field and no single answer equals it). `normalize(answer)` gives the whole-answer key for text formats."""
    n = len(answers)
    if fmt == "json":
        value, agree, failed = _field_majority([a.value for a in answers], n, "")
        if failed:
            return Vote(None, agree, f"no majority on '{failed}' ({agree}/{n} agree)"), None
        chosen = next((i for i, a in enumerate(answers) if _key(a.value) == _key(value)), None)
        if chosen is not None:
            return Vote(answers[chosen], agree), chosen
        output = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return Vote(Answer(value, output, answers[0].reasoning), agree), None
    keys = [normalize(a) for a in answers]
    best, agree = Counter(keys).most_common(1)[0]
    chosen = keys.index(best)
    if agree * 2 <= n:
        return Vote(answers[chosen], agree, f"no majority answer ({agree}/{n} agree)"), chosen
    return Vote(answers[chosen], agree), chosen
