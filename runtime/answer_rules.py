"""How one request of a JSON task expert is decoded and finished, by the rules its bundle carries:

- copied fields (runtime.copy_fields): names, cities, texts are held to the request's own words, never to words
  alone that most requests of their kind write (`copy_stop_words`: a label "timer", a city "today");
- named choices (runtime.named_choices): an enum field is held to the one choice a request names alone, where
  the training data showed that choice so answered (`named_choices`: "tomorrow" for the day);
- derived numbers (runtime.derived_numbers): a number made from a request number by a constant factor may be
  written as the arithmetic ("5 * 60"), worked out afterwards; a number written with a unit word the training
  data showed for the field ("5 minute") takes that unit's factor only;
- clock fields (runtime.clock_times): a 24-hour time may be copied as the request writes it ("6pm"), converted
  afterwards;
- no-repeat fields: a string member that repeats the words a derived value beside it was made from (a timer's
  label "5 minute" next to "5 * 60"), or holds nothing but unit words of that value's field ("minutes"), is
  dropped, as it was from the training answers (kit.distill.derived_values).

`Expert.run`, `kit chat`, the server (for the bundle's own schema), the eval and the probe all decode and finish
answers this way, so every score is what an app gets. Standard library only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Collection

from runtime import clock_times, derived_numbers
from runtime.copy_fields import copy_schema
from runtime.named_choices import named_schema


@dataclass(frozen=True)
class AnswerRules:
    copy_fields: tuple[str, ...] = ()
    derived_numbers: dict[str, list[int | float]] = field(default_factory=dict)
    clock_fields: tuple[str, ...] = ()
    no_repeat_fields: tuple[str, ...] = ()
    unit_factors: dict[str, dict[str, int | float]] = field(default_factory=dict)
    copy_stop_words: dict[str, list[str]] = field(default_factory=dict)
    named_choices: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, source: Any) -> "AnswerRules":
        """The rules of a manifest (or any object / dict with those attributes / keys)."""
        get = source.get if isinstance(source, dict) else (lambda key, default: getattr(source, key, default))
        return cls(tuple(get("copy_fields", ()) or ()), dict(get("derived_numbers", {}) or {}),
                   tuple(get("clock_fields", ()) or ()), tuple(get("no_repeat_fields", ()) or ()),
                   dict(get("unit_factors", {}) or {}), dict(get("copy_stop_words", {}) or {}),
                   dict(get("named_choices", {}) or {}))

    @property
    def rewrites_answers(self) -> bool:
        """Whether `finish` may change an answer (the model writes some values in a form of its own)."""
        return bool(self.derived_numbers or self.clock_fields)

    def __bool__(self) -> bool:
        return bool(self.copy_fields or self.named_choices or self.rewrites_answers)

    def schema(self, schema: dict[str, Any] | None, text: str) -> dict[str, Any] | None:
        """`schema` as a request whose text is `text` is decoded with (the schema itself when nothing applies)."""
        schema = copy_schema(schema, self.copy_fields, text, self.copy_stop_words)
        schema = named_schema(schema, self.named_choices, text)
        schema = derived_numbers.derived_schema(schema, self.derived_numbers, text, self.unit_factors)
        return clock_times.clock_schema(schema, self.clock_fields, text)

    def finish(self, text: str) -> str:
        """The model's JSON answer with its arithmetic worked out and its clock spans converted (compact JSON);
        `text` itself when nothing changes or it is no JSON."""
        if not self.rewrites_answers:
            return text
        try:
            value = json.loads(text)
        except ValueError:
            return text
        done = self._without_repeats(value) if self.no_repeat_fields else value
        done = clock_times.resolve_value(derived_numbers.resolve_value(done, self.derived_numbers), self.clock_fields)
        return text if done == value else json.dumps(done, ensure_ascii=False, separators=(",", ":"))

    def _without_repeats(self, value: Any) -> Any:
        """`value` without the no-repeat members that repeat the numbers an expression beside them uses or the time
        a clock field beside them holds (read before either is worked out)."""
        return without_repeats(value, self._sources, lambda key: key in self.no_repeat_fields)[0]

    def _sources(self, value: dict[str, Any]) -> tuple[set[float], set[str], set[str]]:
        used: set[float] = set()
        times: set[str] = set()
        units: set[str] = set()
        for key, item in value.items():
            if key in self.derived_numbers and isinstance(item, str) and derived_numbers.EXPRESSION.match(item):
                used |= derived_numbers.expression_numbers(item)
                units |= set(self.unit_factors.get(key, ()))
            elif key in self.clock_fields and isinstance(item, str):
                if time := item if clock_times.HH_MM.match(item) else clock_times.to_24h(item):
                    times.add(time)
        return used, times, units


# (request numbers, "HH:MM" times, unit words) the derived members of an object were made from / written in
Sources = Callable[[dict[str, Any]], tuple[set[float], set[str], set[str]]]


def without_repeats(value: Any, sources: Sources, beside: Callable[[str], bool],
                    only: Collection[str] | None = None) -> tuple[Any, list[str], list[str]]:
    """`value` (any JSON) without the string members that repeat what a derived value of their own object was made
    from: `sources(object)` gives the request numbers and "HH:MM" times its derived members used and the unit words
    of their fields (a member holding nothing but those and numbers repeats too), `beside(key)`
    which string members are checked, `only` (when given) which of those may go. Also returns the keys dropped and
    the keys checked (dropped or not). The runtime drops what a model writes (AnswerRules.finish), the distill stage
    what a teacher wrote (kit.distill.derived_values)."""
    if isinstance(value, list):
        parts = [without_repeats(item, sources, beside, only) for item in value]
        return [p[0] for p in parts], [k for p in parts for k in p[1]], [k for p in parts for k in p[2]]
    if not isinstance(value, dict):
        return value, [], []
    numbers, times, units = sources(value)
    out, dropped, checked = {}, [], []
    for key, item in value.items():
        if isinstance(item, str) and (numbers or times) and beside(key):
            checked.append(key)
            if (only is None or key in only) and repeats(item, numbers, times, units):
                dropped.append(key)
                continue
        if isinstance(item, (dict, list)):
            item, inner_dropped, inner_checked = without_repeats(item, sources, beside, only)
            dropped += inner_dropped
            checked += inner_checked
        out[key] = item
    return out, dropped, checked


def repeats(text: str, numbers: set[float], times: set[str], units: set[str] = frozenset()) -> bool:
    """Whether `text` writes one of `numbers` (request numbers a derived value was made from) or a time of day that
    is one of `times` ("HH:MM"), or holds nothing but numbers and `units` words ("minutes", "hour 30")."""
    if not (numbers or times):
        return False
    return bool({float(n) for n in derived_numbers.request_numbers(text)} & numbers
                or {clock_times.to_24h(span) for span in clock_times.clock_spans(text)} & times
                or units and derived_numbers.only_units(text, units))
