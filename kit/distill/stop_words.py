"""Stop words of copied fields, learned from the accepted samples (runtime.copy_fields).

A copied field (a timer's label, a city, a contact's name) is decoded as a span of the request. A small student
that wants to fill an optional one where the request gives nothing for it takes whatever span is at hand: "set a
5 minute timer" comes back labelled "timer", "what's the weather in Tokyo today" with the city "today". Such
words have something in common: most requests of the field's kind write them, and no value of the field is ever
made of them alone. So for each copied field, the kinds of answer that hold it are found (the branch of the
output schema's top-level `oneOf` / `anyOf` an answer takes, kit.distill.critic.same_kind; one kind without
branches), and a word is a stop word of the field when at least `MIN_SHARE` of the requests of such a kind write
it (a kind counted from `MIN_REQUESTS` samples) and no value of the field in any sample holds it. The runtime
offers no span made of nothing but stop words; a span with any other word in it ("for the gym") is offered as
before. Shapes count like words (runtime.copy_fields.span_shapes: "#date", "#time", "#number"), but a span
holding a stop shape anywhere is not offered: every event request writes a date and no title ever held one, so
"haircut 2026-07-22" is no title. Saved with the dataset's other rules (kit.core.dataset.DERIVED_VALUES), carried by the bundle.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from kit.distill.critic.same_kind import answer_kind, schema_branches
from kit.distill.derived_values import answered, members
from runtime.copy_fields import span_shapes, span_words

MIN_SHARE = 0.4
MIN_REQUESTS = 5


def learn(samples: list[dict[str, Any]], fields: list[str], schema: dict[str, Any] | None) -> dict[str, list[str]]:
    """{copied field: its stop words, sorted} for the `fields` (the recipe's copied fields) of `samples` (rows
    with `input` and JSON `output` text); a field without any is left out."""
    if not fields:
        return {}
    branches = schema_branches(schema)
    requests: dict[Any, Counter] = defaultdict(Counter)  # kind -> how many of its requests write each word
    counts: Counter = Counter()  # kind -> requests
    holding: dict[str, set] = defaultdict(set)  # field -> the kinds whose answers hold it
    used: dict[str, set[str]] = defaultdict(set)  # field -> the words its values hold
    for row, answer in answered(samples):
        kind = answer_kind(answer, branches) if branches else 0
        counts[kind] += 1
        request = str(row.get("input", ""))
        requests[kind].update(set(span_words(request)) | span_shapes(request))
        for key, value in members(answer):
            if key in fields and isinstance(value, str):
                holding[key].add(kind)
                used[key].update(span_words(value))
                used[key].update(span_shapes(value))
    stop = {}
    for key in fields:
        frequent = {word for kind in holding.get(key, ()) if counts[kind] >= MIN_REQUESTS
                    for word, n in requests[kind].items() if n >= MIN_SHARE * counts[kind]}
        if words := sorted(frequent - used[key]):
            stop[key] = words
    return stop
