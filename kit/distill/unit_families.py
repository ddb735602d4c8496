"""Units a derived number field takes that its samples did not show, from the family of the units they did.

A derived field's unit words are learned from the samples (kit.distill.derived_values.unit_factors: "minute" ->
60 where at least two samples agree). A family of units is a fixed set of ratios ("hour" is 60 "minute"s, a
"minute" 60 "second"s), so once the samples show a field's scale in one family ("minute" -> 60: the field counts
seconds), the family's units next to those shown follow: "hour" -> 3600 (one unit past the largest and the smallest
shown, and those between: a timer data set in seconds and minutes gets hours, not days). One build's 240 samples held a single
timer in hours; its student could not set "a timer for one hour", because the runtime offered "1 * 60" and "1"
only. A family is taken only when every learned unit word of the field that belongs to it agrees on one scale,
and only whole factors of at least 1 are added (a field counting minutes gets "hour" -> 60, never "second").
Learned units always win; the added ones are listed in `derived_values.json` (`unit_families`).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

# unit words as runtime.derived_numbers.number_units writes them: lower case, a plural's "s" cut (words over 3
# letters): "mins" -> "min", "hours" -> "hour", "hrs" stays "hrs"; one-letter units ("5m": metres or minutes?)
# are left out
FAMILIES: dict[str, dict[str, Fraction]] = {
    "time": {word: Fraction(value) for words, value in (
        (("second", "sec"), 1), (("minute", "min"), 60), (("hour", "hr", "hrs"), 3600),
        (("day",), 86400)) for word in words},
    "length": {word: Fraction(value) for words, value in (
        (("millimeter", "millimetre", "mm"), 1), (("centimeter", "centimetre", "cm"), 10),
        (("meter", "metre"), 1000), (("kilometer", "kilometre", "km"), 1000000)) for word in words},
    "mass": {word: Fraction(value) for words, value in (
        (("milligram", "mg"), 1), (("gram",), 1000), (("kilogram", "kg", "kilo"), 1000000)) for word in words},
    "volume": {word: Fraction(value) for words, value in (
        (("milliliter", "millilitre", "ml"), 1), (("liter", "litre"), 1000)) for word in words},
}


def extend(numbers: dict[str, list[int | float]], units: dict[str, dict[str, Any]]
           ) -> tuple[dict[str, list[int | float]], dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(factors, unit words, added) for the derived fields `numbers` ({field: factors}) whose learned `units`
    ({field: {unit word: factor}}) fix a scale in a family: each such field also takes the family's other unit
    words at that scale (whole factors only; the units between and one past those shown), and their factors join the field's (after the learned ones).
    `added` is {field: {unit word: factor}} of what was not learned."""
    numbers = {key: list(factors) for key, factors in numbers.items()}
    units = {key: dict(words) for key, words in units.items()}
    added: dict[str, dict[str, Any]] = {}
    for key, learned in sorted(units.items()):
        if key not in numbers:
            continue
        for family in FAMILIES.values():
            scale = _scale(learned, family)
            if scale is None:
                continue
            levels = sorted(set(family.values()))
            shown = [levels.index(family[word]) for word in learned if word in family]
            near = set(levels[max(0, min(shown) - 1):max(shown) + 2])  # one unit past the shown ones each way
            for word, ratio in family.items():
                factor = ratio * scale
                if word in learned or ratio not in near or factor.denominator != 1 or factor < 1:
                    continue
                learned[word] = added.setdefault(key, {})[word] = int(factor)
                if int(factor) not in numbers[key]:
                    numbers[key].append(int(factor))
    return numbers, units, added


def _scale(learned: dict[str, Any], family: dict[str, Fraction]) -> Fraction | None:
    """The one scale (field value per family unit) the learned unit words of `family` agree on, or None."""
    scales = {Fraction(factor).limit_denominator(10**6) / family[word]
              for word, factor in learned.items() if word in family and factor}
    return scales.pop() if len(scales) == 1 else None
