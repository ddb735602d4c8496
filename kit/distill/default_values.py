"""Default values, learned from the accepted samples: for a JSON field whose schema lists its choices (`enum`), the
choice the answers take when the request writes none of them (runtime.default_values).

A 1.5B teacher asked for weather requests names a day in most of them ("in Oslo tomorrow"); the few that name
none ("weather for Berlin") it answers with today, as the author's task asks. A 135M student trained on them
learns "tomorrow" for a weather request far better than the rule behind the few. So a field has a default when
at least `MIN_SUPPORT` samples (seeds included: the author's own answers) write none of its choices in the
request, and at least `MIN_SHARE` of those take one choice; a field whose unnamed choice varies ("enable
bluetooth" -> on, "disable wifi" -> off, neither writing "on" or "off") has none. The runtime then offers that
choice alone for a request that writes none of the field's choices; saved with the dataset's other rules
(kit.core.dataset.DERIVED_VALUES), carried by the bundle.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Iterator

from kit.distill.derived_values import answered, members
from runtime.default_values import words, writes

MIN_SUPPORT = 2
MIN_SHARE = 0.8


def enum_fields(schema: Any) -> dict[str, list[str]]:
    """{property name: its string choices} for every property of `schema` (at any depth, in any branch) that lists
    its choices in an `enum`; a name listed with other choices elsewhere gets the union."""
    fields: dict[str, list[str]] = {}
    for name, prop in _properties(schema):
        choices = prop.get("enum") if isinstance(prop, dict) else None
        if isinstance(choices, list):
            known = fields.setdefault(name, [])
            known += [c for c in choices if isinstance(c, str) and c not in known]
    return {name: choices for name, choices in fields.items() if choices}


def _properties(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, list):
        for item in node:
            yield from _properties(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                for name, prop in value.items():
                    yield name, prop
                    yield from _properties(prop)
            else:
                yield from _properties(value)


def unnamed_choices(samples: list[dict[str, Any]], fields: dict[str, list[str]]) -> dict[str, Counter]:
    """{field: Counter of the choices taken} over the samples whose request writes none of the field's choices."""
    taken: dict[str, Counter] = defaultdict(Counter)
    for row, answer in answered(samples):
        request = words(row.get("input", ""))
        for key, value in members(answer):
            if key in fields and value in fields[key] and not any(writes(request, c) for c in fields[key]):
                taken[key][value] += 1
    return taken


def learn(samples: list[dict[str, Any]], fields: dict[str, list[str]]) -> dict[str, str]:
    """{field: default choice} for the `fields` ({name: choices}) whose unnamed choice the samples agree on."""
    defaults = {}
    for key, counts in sorted(unnamed_choices(samples, fields).items()):
        choice, count = counts.most_common(1)[0]
        total = sum(counts.values())
        if total >= MIN_SUPPORT and count >= MIN_SHARE * total:
            defaults[key] = choice
    return defaults
