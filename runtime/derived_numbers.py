"""Derived numbers: a JSON number the answer computes from a number in the request by a constant factor
("a 5 minute timer" -> 300 seconds, "1 hour 30 minutes" -> 5400) is written by the model as the arithmetic,
not the result, and the runtime does the arithmetic.

A small model learns "minutes" -> "* 60" from a handful of examples; it does not learn 25 x 60 = 1500. So a
bundle may name such fields with the factors its training data showed (`derived_numbers` in its manifest:
{"duration_seconds": [60, 3600, 1]}), learned when the dataset is written (kit.distill.derived_numbers). For
each request the output schema's number property of that name may then also be a string from an `enum` of
expressions over the request's own numbers ("5 * 60", "5 * 3600", "1 * 3600 + 30 * 60"), which llama.cpp's
grammar enforces; `resolve_value` turns every such string back into the number the schema asks for, so apps,
the server and the eval see plain JSON. Which number and which factor is still the model's choice, but where
the training data showed the word after a number as a unit of the field (`unit_factors`: {"duration_seconds":
{"minute": 60, "hour": 3600}}), a number the request writes with such a word is offered with that factor only:
"a 5 minute timer" offers "5 * 60", never "5 * 3600". Standard library only: the runtime embeds it.
"""

from __future__ import annotations

import re
from itertools import combinations
from typing import Any

from runtime.clock_times import CLOCK, to_24h
from runtime.json_fields import offered_per_request, with_named_values

MAX_NUMBERS = 6  # request numbers offered to the expressions (the first ones, in order)
MAX_EXPRESSIONS = 400  # above this, sums of two terms are left out of the enum

# a number written in a request: not part of a longer word or number, a clock time, a date or a path
# ("5", "1.5", "5min" and "5-minute" count; "10:45", "2026-05-04", "v2" do not)
_NUMBER = re.compile(r"(?<![\w.:/-])(\d+(?:\.\d+)?)(?![.:/]\d|-\d|\d)")
_WORDS = {word: value for value, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())} | {
    "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_WORD = re.compile(r"\b(" + "|".join(_WORDS) + r")\b", re.IGNORECASE)
_TERM = r"\d+(?:\.\d+)?(?:\s*\*\s*\d+(?:\.\d+)?)?"
EXPRESSION = re.compile(rf"^\s*{_TERM}(?:\s*\+\s*{_TERM})*\s*$")


def request_numbers(text: str) -> list[int | float]:
    """The numbers a request writes, as digits or as words (one .. ninety), in order, each once; not the hours
    and minutes of a time of day ("6pm", "10:45 p.m.": runtime.clock_times)."""
    out: list[int | float] = []
    for _, value, _ in _number_matches(text):
        if value not in out:
            out.append(value)
    return out


def number_units(text: str) -> dict[int | float, list[str]]:
    """{request number: the words written right after it, in order} ("3 hours" -> {3: ["hour"]}, "a 5-minute
    timer" -> {5: ["minute"]}); a word is lower-cased, a plural's "s" cut. The unit a number is counted in."""
    units: dict[int | float, list[str]] = {}
    for value, word in _number_words(text):
        if word is not None:
            units.setdefault(value, []).append(word)
    return units


def _number_words(text: str) -> list[tuple[int | float, str | None]]:
    """(request number, the word written right after it as `number_units` gives it, or None) for every number."""
    return [(value, _unit_word(match.group(1)) if (match := _UNIT.match(text, end)) else None)
            for _, value, end in _number_matches(text)]


_UNIT = re.compile(r"\s*-?\s*([A-Za-z]+)")


def _unit_word(word: str) -> str:
    word = word.lower()
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


_LETTERS_OR_NUMBER = re.compile(r"[^\W\d_]+|\d+(?:\.\d+)?")


def only_units(text: str, units: set[str] | frozenset[str]) -> bool:
    """Whether `text` holds nothing but numbers and words of `units` (singular unit words as `number_units` gives
    them), one such word at least: "minutes", "hour 30", "five minutes"; not "pasta", "5 minute pasta"."""
    named = [w for w in _LETTERS_OR_NUMBER.findall(text) if not w[0].isdigit() and w.lower() not in _WORDS]
    return bool(named) and all(_unit_word(w) in units for w in named)


def _number_matches(text: str) -> list[tuple[int, int | float, int]]:
    """(start, value, end) of every request number, in order (numbers inside clock times left out)."""
    times = [m.span() for m in CLOCK.finditer(text) if to_24h(m.group(0)) is not None]
    found: list[tuple[int, int | float, int]] = []
    for match in _NUMBER.finditer(text):
        if not any(start <= match.start() < end for start, end in times):
            found.append((match.start(), _number(match.group(1)), match.end()))
    for match in _WORD.finditer(text):
        found.append((match.start(), _WORDS[match.group(1).lower()], match.end()))
    return sorted(found, key=lambda item: item[0])


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def _fmt(value: int | float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def term(number: int | float, factor: int | float) -> str:
    """One term as the model writes it: "5 * 60", or "45" for a factor of 1."""
    return _fmt(number) if factor == 1 else f"{_fmt(number)} * {_fmt(factor)}"


def expression_numbers(expression: str) -> set[float]:
    """The request numbers an expression is made from ("1 * 3600 + 30 * 60" -> {1.0, 30.0})."""
    return {float(t.split("*")[0]) for t in expression.split("+")}


def expressions(numbers: list[int | float], factors: list[int | float],
                unit_bound: dict[int | float, list[int | float]] | None = None) -> list[str]:
    """Every expression over `numbers` (in request order) and `factors`: one term each, then sums of two terms
    over two different numbers in their request order (left out when there would be too many). A number in
    `unit_bound` takes only the factors given there (those its unit words take)."""
    numbers = numbers[:MAX_NUMBERS]
    own = {n: [f for f in factors if f in (unit_bound or {}).get(n, factors)] or factors for n in numbers}
    singles = [term(n, f) for n in numbers for f in own[n]]
    pairs = [f"{term(a, fa)} + {term(b, fb)}" for a, b in combinations(numbers, 2) for fa in own[a] for fb in own[b]
             if not (fa == 1 and fb == 1)]
    out = list(dict.fromkeys(singles + (pairs if len(singles) + len(pairs) <= MAX_EXPRESSIONS else [])))
    return out


def evaluate(expression: str) -> int | float:
    """The value of an expression `EXPRESSION` accepts (whole when it is whole)."""
    total = 0.0
    for part in expression.split("+"):
        value = 1.0
        for factor in part.split("*"):
            value *= float(factor)
        total += value
    return int(total) if total.is_integer() else total


def unit_bound_factors(text: str, units: dict[str, int | float] | None) -> dict[int | float, list[int | float]]:
    """{request number: the factors of its unit words} for each number `text` writes only with words after it
    that are units in `units` ({word: factor}, words as `number_units` gives them): "a 5 minute timer" with
    {"minute": 60} -> {5: [60]}; a number written once without such a word ("timer 5", "5 eggs") is left out."""
    if not units:
        return {}
    written: dict[int | float, list[str | None]] = {}
    for value, word in _number_words(text):
        written.setdefault(value, []).append(word)
    factors = {value: [units.get(word) for word in words]  # a number without a unit word gets None
               for value, words in written.items()}
    return {value: list(dict.fromkeys(found)) for value, found in factors.items() if None not in found}


def derived_schema(schema: dict[str, Any] | None, fields: dict[str, list[int | float]] | None,
                   text: str, unit_factors: dict[str, dict[str, int | float]] | None = None) -> dict[str, Any] | None:
    """`schema` where each number property named in `fields` may also be one of the expressions over the
    numbers of `text` with that field's factors, a number written with a unit word of that field (`unit_factors`)
    with its unit's factor only (the schema itself when there is nothing to offer)."""
    units = unit_factors or {}
    return offered_per_request(schema, fields or {}, lambda: request_numbers(text),
                               lambda name, prop, numbers: _with_expressions(
                                   prop, fields[name], numbers, unit_bound_factors(text, units.get(name))))


def _with_expressions(prop: Any, factors: list[int | float], numbers: list[int | float],
                      unit_bound: dict[int | float, list[int | float]] | None = None) -> Any:
    if not isinstance(prop, dict) or prop.get("type") not in ("integer", "number") or "enum" in prop or "const" in prop:
        return prop
    return {"anyOf": [{"type": "string", "enum": expressions(numbers, factors, unit_bound)}, prop]}


def resolve_value(value: Any, fields: dict[str, list[int | float]] | list[str]) -> Any:
    """`value` (parsed JSON) with every expression string under a field of `fields` replaced by its number."""
    return with_named_values(value, set(fields), lambda _, item: evaluate(item)
                             if isinstance(item, str) and EXPRESSION.match(item) else item)
