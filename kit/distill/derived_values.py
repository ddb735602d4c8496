"""Values the answer derives from the request by a rule the runtime can apply, learned from the accepted
samples, and the training answers that write them in the model's own form (runtime.answer_rules).

- Derived numbers: a JSON number field is derived when at least `MIN_SUPPORT` samples (and a tenth of those
  holding the field) show it as a number of the request times the same factor other than 1 ("5 minutes" -> 300:
  factor 60). Its factors are those at least `MIN_SUPPORT` samples show (1 included, for "45 seconds" -> 45;
  a factor one sample shows is as likely a teacher's slip: "3 hours" -> 18000), most common first, at most
  `MAX_FACTORS`. The training answer writes the arithmetic
  ("5 * 60", "1 * 3600 + 30 * 60").
- Clock fields: a string field holding 24-hour "HH:MM" times is a clock field when at least `MIN_SUPPORT`
  samples, and half of those holding such a time there, take it from a time the request writes its own way
  ("6pm" -> "18:00", "9:30" -> "09:30"). The training answer copies the request's time as written.

A sample whose value in a derived field no rule explains (a timer of "3 hours" labelled 18000 seconds, a
"deadline for the homework" labelled 1800, a calendar time the request never gives), or that takes a request
number in another factor than the word after it takes in the other samples ("3 hours" labelled 1800 = 3 * 600,
where "hour" is * 3600 in most samples: `unit_factors`), is a teacher's slip the rest of the data contradicts:
`unexplained` names it and the dataset leaves it out of training (the sample store keeps it), for each field
whose rule explains more than `MIN_EXPLAINED` of the samples holding it.

- No-repeat fields: a string member that repeats the request words a derived value beside it was taken from (a
  timer's label "5 minutes" next to its 300 seconds, an alarm's label "6:45"), or holds nothing but the unit
  words of that value's field and numbers (a label "minutes", `unit_factors`), holds nothing the request gives
  beyond that value: the teacher's habit of filling an optional field. A string field seen beside derived values
  is a no-repeat field unless the seeds show it repeating such words (the author wants it) or, without seeds
  that show it beside a derived value, half or more of the samples do. `repeated_spans` drops such members from
  the training answers and the runtime drops them from the model's (runtime.answer_rules).

The rules are saved with the dataset (kit.core.dataset.DERIVED_VALUES), whence export puts them in the bundle.
The runtime offers those forms per request and turns them back into the teacher's (runtime.derived_numbers,
runtime.clock_times); the teacher's answers, the `output` column and every score stay as the schema asks.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from itertools import combinations, product
from typing import Any, Iterator

from kit.distill import unit_families
from runtime.clock_times import HH_MM, clock_spans, to_24h
from runtime.answer_rules import without_repeats
from runtime.derived_numbers import expression_numbers, number_units, request_numbers, term

MIN_SUPPORT = 2
MIN_SHARE = 0.1
MAX_FACTORS = 6
MIN_EXPLAINED = 0.5  # a rule that explains no more than half of its field's values cannot overrule the teacher


def members(value: Any) -> Iterator[tuple[str, Any]]:
    """(key, member) for every member of an object holding no object or list, at any depth."""
    if isinstance(value, list):
        for item in value:
            yield from members(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)):
                yield from members(item)
            else:
                yield key, item


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def learn(samples: list[dict[str, Any]], seeds: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """{"derived_numbers": {field: factors}, "unit_factors": {field: {unit word: factor}}, "clock_fields": [field,
    ...], "no_repeat_fields": [field, ...], "unit_families": {field: {unit word: factor}}} for `samples` (rows with
    `input` and JSON `output` text; `seeds` in the same form, the author's own answers); empty parts when no rule
    holds. `unit_factors` holds the unit words the samples show and those their family adds (`unit_families`:
    kit.distill.unit_families), whose factors join the field's."""
    numbers = learn_numbers(samples)
    numbers, units, family_units = unit_families.extend(numbers, learn_units(samples, numbers))
    learned = {"derived_numbers": numbers, "unit_factors": units, "clock_fields": learn_clock_fields(samples)}
    return learned | {"no_repeat_fields": learn_no_repeat_fields(samples, seeds, learned), "unit_families": family_units}


def learn_units(samples: list[dict[str, Any]], numbers: dict[str, list[int | float]]) -> dict[str, dict[str, Any]]:
    """{field: {unit word: factor}} for the unit words `unit_factors` finds with one of the field's factors: the
    runtime offers a request number written with such a word in that factor only."""
    out = {key: {unit: factor for unit, (factor, _) in sorted(units.items()) if factor in numbers.get(key, ())}
           for key, units in sorted(unit_factors(samples, numbers).items())}
    return {key: units for key, units in out.items() if units}


def learn_no_repeat_fields(samples: list[dict[str, Any]], seeds: list[dict[str, Any]], learned: dict[str, Any]) -> list[str]:
    """The string fields seen beside a derived value that should never repeat the words it was taken from."""
    numbers, clock = _rules(learned)
    if not (numbers or clock):
        return []
    units = learned.get("unit_factors") or {}
    _, beside, repeating = _scan(samples, numbers, clock, units)
    _, seeds_beside, seeds_repeating = _scan(seeds, numbers, clock, units)
    return sorted(key for key in set(beside) | set(seeds_beside) if not seeds_repeating[key]
                  and (seeds_beside[key] or repeating[key] * 2 < beside[key]))


def learn_numbers(samples: list[dict[str, Any]]) -> dict[str, list[int | float]]:
    """{field: factors} for the derived number fields of `samples`; a factor only samples that break their unit's
    rule show ("3 hours" -> 1800 twice: 3 * 600, where "hour" is * 3600) is no factor."""
    fields = _factors(samples)
    units = unit_factors(samples, fields)
    if not units:
        return fields
    return _factors([row for row, answer in answered(samples)
                     if _unit_slip(str(row.get("input", "")), answer, fields, units) is None])


def _factors(samples: list[dict[str, Any]]) -> dict[str, list[int | float]]:
    support: dict[str, Counter] = defaultdict(Counter)
    holding: Counter = Counter()
    for sample, answer in answered(samples):
        numbers = [n for n in request_numbers(str(sample.get("input", ""))) if n > 0]
        for key, value in members(answer):
            if not _is_number(value):
                continue
            holding[key] += 1
            factors = {_whole(value / n) for n in numbers if value > 0}
            for factor in factors - {None}:
                support[key][factor] += 1
    fields = {}
    for key, counts in support.items():
        floor = max(MIN_SUPPORT, MIN_SHARE * holding[key])
        factors = [f for f, count in counts.most_common(MAX_FACTORS) if count >= MIN_SUPPORT]
        if any(f != 1 and counts[f] >= floor for f in factors):
            fields[key] = factors
    return dict(sorted(fields.items()))


def unit_factors(samples: list[dict[str, Any]], numbers: dict[str, list[int | float]]) -> dict[str, dict[str, tuple]]:
    """{field: {unit word: (factor, samples)}}: the factor a derived field takes for a request number written with
    that word after it ("hour" -> 3600), where at least `MIN_SUPPORT` samples, and more than half of those
    writing the word, agree."""
    table: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for row, answer in answered(samples):
        for key, number, factor, unit in _unit_terms(str(row.get("input", "")), answer, numbers):
            table[key][unit][factor] += 1
    out: dict[str, dict[str, tuple]] = {}
    for key, units in table.items():
        for unit, counts in units.items():
            factor, count = counts.most_common(1)[0]
            if count >= MIN_SUPPORT and count * 2 > sum(counts.values()):
                out.setdefault(key, {})[unit] = (factor, count)
    return out


def _unit_terms(input_text: str, answer: Any, numbers: dict[str, list[int | float]]) -> Iterator[tuple]:
    """(field, request number, factor, the word after that number) for each term of each derived value of
    `answer` that a learned factor explains."""
    if not numbers:
        return
    request = request_numbers(input_text)
    units = number_units(input_text)
    for key, value in members(answer):
        if key in numbers and _is_number(value):
            for number, factor in _terms_for(value, request, numbers[key]) or ():
                if words := units.get(number):
                    yield key, number, factor, words[0]


def _unit_slip(input_text: str, answer: Any, numbers: dict[str, list[int | float]],
               units: dict[str, dict[str, tuple]]) -> tuple[str, str] | None:
    """(field, reason) for the first derived value that takes a request number in another factor than its unit
    word does in the other samples ("3 hours" -> 1800 = 3 * 600, where "hour" is * 3600), or None."""
    for key, number, factor, unit in _unit_terms(input_text, answer, numbers):
        rule = units.get(key, {}).get(unit)
        if rule and rule[0] != factor:
            return key, (f"'{key}' takes '{term(number, 1)} {unit}' as {term(number, factor)}, where '{unit}' is "
                         f"* {term(rule[0], 1)} in {rule[1]} samples")
    return None


def learn_clock_fields(samples: list[dict[str, Any]]) -> list[str]:
    """The string fields of `samples` whose "HH:MM" times are the request's own times, converted."""
    support: Counter = Counter()
    holding: Counter = Counter()
    for sample, answer in answered(samples):
        times = {to_24h(span) for span in clock_spans(str(sample.get("input", "")))}
        for key, value in members(answer):
            if isinstance(value, str) and HH_MM.match(value):
                holding[key] += 1
                support[key] += value in times
    return sorted(key for key, count in support.items() if count >= max(MIN_SUPPORT, holding[key] / 2))


def answered(rows: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Any]]:
    """(row, its parsed JSON answer) for each row whose `output` parses."""
    for row in rows:
        answer = _parsed(row.get("output"))
        if answer is not None:
            yield row, answer


def _whole(ratio: float) -> int | None:
    """A factor: a whole number of at least 1 (a ratio within rounding of one)."""
    nearest = round(ratio)
    return int(nearest) if nearest >= 1 and abs(ratio - nearest) < 1e-9 * max(1.0, ratio) else None


def expression_for(value: int | float, numbers: list[int | float], factors: list[int | float]) -> str | None:
    """The first expression over the request's numbers that makes `value`: one term (factors in order of
    support), else two terms over two numbers in their request order; None when none does."""
    terms = _terms_for(value, numbers, factors)
    return " + ".join(term(number, factor) for number, factor in terms) if terms else None


def _terms_for(value: int | float, numbers: list[int | float],
              factors: list[int | float]) -> list[tuple[int | float, int | float]] | None:
    """The (request number, factor) terms of `expression_for`'s expression, or None."""
    for number, factor in product(numbers, factors):
        if abs(number * factor - value) < 1e-9:
            return [(number, factor)]
    for (a, b), (fa, fb) in product(combinations(numbers, 2), product(factors, factors)):
        if not (fa == 1 and fb == 1) and abs(a * fa + b * fb - value) < 1e-9:
            return [(a, fa), (b, fb)]
    return None


def student_answer(input_text: str, output: str, learned: dict[str, Any]) -> str:
    """The training answer: `output` with each derived number it can explain written as its expression and each
    clock time the request writes copied as written (the answer as it was when nothing changes)."""
    answer = _parsed(output)
    numbers = learned.get("derived_numbers") or {}
    clock = set(learned.get("clock_fields") or ())
    if answer is None or not (numbers or clock):
        return output
    spans = {to_24h(span): span for span in reversed(clock_spans(input_text))} if clock else {}
    rewritten = _rewrite(answer, numbers, request_numbers(input_text) if numbers else [], clock, spans)
    if rewritten == answer:
        return output
    return json.dumps(rewritten, ensure_ascii=False, separators=(",", ":"))


def unexplained(input_text: str, output: str, learned: dict[str, Any]) -> str | None:
    """Why the answer breaks a learned rule ("'duration_seconds' 18000 is no number of the request times 60 or
    1"), or None when every derived value in it is explained (or there is nothing to check)."""
    answer = _parsed(output)
    numbers, clock = _rules(learned)
    slip = _slip(input_text, answer, numbers, clock) if answer is not None else None
    return slip[1] if slip else None


def inconsistent(samples: list[dict[str, Any]], learned: dict[str, Any]) -> dict[str, str]:
    """{sample id: reason} for the samples whose derived values no learned rule explains, counting only the
    fields whose rule explains more than MIN_EXPLAINED of the samples holding them."""
    numbers, clock = _rules(learned)
    ruled = set(numbers) | clock
    if not ruled:
        return {}
    holding: Counter = Counter()
    broken: Counter = Counter()
    slips: dict[str, tuple[str, str]] = {}
    units = unit_factors(samples, numbers)
    for sample, answer in answered(samples):
        holding.update({key for key, _ in members(answer)} & ruled)
        text = str(sample.get("input", ""))
        slip = _slip(text, answer, numbers, clock) or _unit_slip(text, answer, numbers, units)
        if slip:
            slips[sample["id"]] = slip
            broken[slip[0]] += 1
    strong = {key for key in holding if broken[key] < (1 - MIN_EXPLAINED) * holding[key]}
    return {i: why for i, (key, why) in slips.items() if key in strong}


def repeated_spans(samples: list[dict[str, Any]], learned: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """{sample id: (answer without the repeating members, reason)} for the samples with a member of a no-repeat
    field that repeats the request words a derived value beside it was taken from."""
    numbers, clock = _rules(learned)
    keep = set(learned.get("no_repeat_fields") or ())
    if not keep:
        return {}
    out = {}
    for sample_id, (cleaned, dropped) in _scan(samples, numbers, clock, learned.get("unit_factors") or {},
                                               keep)[0].items():
        fields = ", ".join(f"'{key}'" for key in dict.fromkeys(dropped))
        out[sample_id] = (json.dumps(cleaned, ensure_ascii=False, separators=(",", ":")),
                          f"{fields} repeats the request words a derived value beside it was taken from")
    return out


def _scan(rows: list[dict[str, Any]], numbers: dict[str, list[int | float]], clock: set[str],
          units: dict[str, dict[str, Any]],
          only: set[str] | None = None) -> tuple[dict[str, tuple[Any, list[str]]], Counter, Counter]:
    """({row id: (answer without repeats, keys dropped)}, string keys seen beside a derived value, keys repeating
    its words) over `rows`; `only`: drop these keys only."""
    found: dict[str, tuple[Any, list[str]]] = {}
    beside: Counter = Counter()
    repeating: Counter = Counter()
    for row, answer in answered(rows):
        cleaned, dropped, held = _without_repeats(answer, request_numbers(str(row.get("input", ""))), numbers,
                                                  clock, units, only)
        beside.update(held)
        repeating.update(dropped)
        if dropped:
            found[row["id"]] = (cleaned, dropped)
    return found, beside, repeating


def _without_repeats(value: Any, request: list[int | float], numbers: dict[str, list[int | float]],
                     clock: set[str], units: dict[str, dict[str, Any]],
                     only: set[str] | None = None) -> tuple[Any, list[str], list[str]]:
    """`value` without the string members (of the `only` keys, when given) that repeat the request words a derived
    sibling was taken from, the keys dropped, and the string keys seen beside a derived value (dropped or not)."""
    def sources(obj: dict[str, Any]) -> tuple[set[float], set[str], set[str]]:
        used: set[float] = set()  # the request numbers a derived number here was made from
        times: set[str] = set()  # the clock times a clock field here took from the request
        words: set[str] = set()  # the unit words of those derived numbers' fields
        for key, item in obj.items():
            if key in numbers and _is_number(item) and (expression := expression_for(item, request, numbers[key])):
                used |= expression_numbers(expression)
                words |= set(units.get(key, ()))
            elif key in clock and isinstance(item, str) and HH_MM.match(item):
                times.add(item)
        return used, times, words

    return without_repeats(value, sources, lambda key: key not in numbers and key not in clock, only)


def _rules(learned: dict[str, Any]) -> tuple[dict[str, list[int | float]], set[str]]:
    return learned.get("derived_numbers") or {}, set(learned.get("clock_fields") or ())


def _slip(input_text: str, answer: Any, numbers: dict[str, list[int | float]], clock: set[str]) -> tuple[str, str] | None:
    """(field, reason) for the first derived value of `answer` no rule explains, or None."""
    if not (numbers or clock):
        return None
    request = request_numbers(input_text) if numbers else []
    times = {to_24h(span) for span in clock_spans(input_text)} if clock else set()
    for key, value in members(answer):
        if key in numbers and _is_number(value) and expression_for(value, request, numbers[key]) is None:
            factors = " or ".join(str(f) for f in numbers[key])
            return key, f"'{key}' {value} is no number of the request times {factors}"
        if key in clock and isinstance(value, str) and HH_MM.match(value) and value not in times:
            return key, f"'{key}' {value} is no time the request gives"
    return None


def _rewrite(value: Any, numbers: dict[str, list[int | float]], request: list[int | float], clock: set[str],
             spans: dict[str | None, str]) -> Any:
    if isinstance(value, list):
        return [_rewrite(item, numbers, request, clock, spans) for item in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        if key in numbers and request and _is_number(item):
            out[key] = expression_for(item, request, numbers[key]) or item
        elif key in clock and isinstance(item, str):
            out[key] = spans.get(item, item)  # the first time written in the request that converts to it
        else:
            out[key] = _rewrite(item, numbers, request, clock, spans)
    return out
