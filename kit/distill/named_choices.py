"""Named choices, learned from the accepted samples (runtime.named_choices).

A choice of an `enum` field of the output schema is a named choice when, over the samples whose request names it
and no other choice of the field as words ("weather in Oslo tomorrow" names "tomorrow" of today|tomorrow), at
least `MIN_SUPPORT` answer the field and at least `MIN_AGREEMENT` of those answer that choice. Kept per choice: a
short word may be named in passing ("disable wifi on the phone" names "on" of on|off and is answered off), so
"off" may be a named choice where "on" is not. The runtime then narrows the field to a named choice a request
names alone. A sample that answers another choice ("weather in Berlin tomorrow?" labelled today where "tomorrow"
is a named choice) is a slip the rest of the data contradicts and is left out of training, like a derived value
no rule explains (kit.distill.derived_values).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterator

from kit.distill.derived_values import answered, members
from runtime.named_choices import named_choices

MIN_SUPPORT = 3
MIN_AGREEMENT = 0.9


def enum_choices(schema: Any, found: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """{property name: its string choices} for every `enum` property of `schema`, at any depth (the choices of
    properties of one name in several branches together)."""
    found = {} if found is None else found
    if isinstance(schema, list):
        for item in schema:
            enum_choices(item, found)
    elif isinstance(schema, dict):
        for name, prop in (schema.get("properties") or {}).items():
            if isinstance(prop, dict) and isinstance(prop.get("enum"), list):
                choices = found.setdefault(name, [])
                choices += [c for c in prop["enum"] if isinstance(c, str) and c not in choices]
        for value in schema.values():
            if isinstance(value, (dict, list)):
                enum_choices(value, found)
    return {name: choices for name, choices in found.items() if len(choices) > 1}


def learn(samples: list[dict[str, Any]], schema: dict[str, Any] | None) -> dict[str, list[str]]:
    """{enum field: its named choices, in the schema's order} for `samples` (rows with `input` and JSON `output`
    text); fields without any are left out."""
    choices = enum_choices(schema)
    support: Counter = Counter()
    agree: Counter = Counter()
    for _, key, value, named in _named(samples, choices):
        support[key, named] += 1
        agree[key, named] += value == named
    learned = {key: [c for c in options if support[key, c] >= MIN_SUPPORT
                     and agree[key, c] >= MIN_AGREEMENT * support[key, c]] for key, options in choices.items()}
    return {key: named for key, named in learned.items() if named}


def slips(samples: list[dict[str, Any]], learned: dict[str, list[str]], schema: dict[str, Any] | None) -> dict[str, str]:
    """{sample id: reason} for the samples whose request names one choice alone, a named choice of `learned`,
    and whose answer takes another."""
    choices = {key: found for key, found in enum_choices(schema).items() if key in learned}
    out = {}
    for row, key, value, named in _named(samples, choices):
        if named in learned[key] and value != named and "id" in row:
            out.setdefault(row["id"], f"'{key}' is {value!r} where the request names {named!r}")
    return out


def _named(samples: list[dict[str, Any]], choices: dict[str, list[str]]) -> Iterator[tuple[dict[str, Any], str, Any, str]]:
    """(row, field, answered value, the one choice the request names) for every enum member of every answer whose
    request names exactly one of its field's choices."""
    if not choices:
        return
    for row, answer in answered(samples):
        text = str(row.get("input", ""))
        for key, value in members(answer):
            if key in choices and len(named := named_choices(text, choices[key])) == 1:
                yield row, key, value, named[0]
