"""Copied fields: JSON string values that must be taken from the request word for word (a name, a city, a
message text, a search query) are held to the request's own words while decoding.

A bundle names such fields (`copy_fields` in its manifest, from the recipe's `grounded` check); for each
request the output schema's string properties of those names become an `enum` of the request's word spans
(those matching the property's pattern, when it has one and a span does), which llama.cpp's grammar enforces. A small model can no longer recase a city ("tokyo"), add a space
(" Cairo"), misspell it ("Buena Aires") or invent a value the request does not hold; which span it copies is
still its own choice. A bundle may also name, per copied field, its stop words (`copy_stop_words`, learned with
the dataset, kit.distill.stop_words): words most requests of the field's kind write ("set", "timer", "weather")
that no value of the field was ever made of alone. A span made of nothing but those is not offered, so a model
that wants a label where the request gives none cannot make one of "timer", nor a city of "today". Stop words
may also name shapes (`span_shapes`: "#date", "#time", "#number") that most requests of the kind write and no
value of the field ever held: a span holding one anywhere is not offered, so an event's title cannot run on into
its date ("haircut 2026-07-22") or its time. Standard library only: the runtime embeds it.
"""

from __future__ import annotations

import re
from typing import Any

from runtime.clock_times import CLOCK, to_24h
from runtime.json_fields import offered_per_request

EDGE_PUNCTUATION = ".,:;!?\"'()[]{}<>"
MAX_WORDS = 96  # longer requests keep the plain schema: the grammar would grow with the square of their length
MAX_SPAN_WORDS = 32


def request_spans(text: str) -> list[str]:
    """Every run of whole words of `text` as written (inner punctuation and spacing kept), with and without the
    punctuation at its ends; in order of first appearance, no repeats. [] for an empty or very long text."""
    words = [m.span() for m in re.finditer(r"\S+", text)]
    if not words or len(words) > MAX_WORDS:
        return []
    spans: dict[str, None] = {}
    for first in range(len(words)):
        for last in range(first, min(len(words), first + MAX_SPAN_WORDS)):
            span = text[words[first][0]:words[last][1]]
            for variant in (span, span.strip(EDGE_PUNCTUATION)):
                if variant.strip():
                    spans.setdefault(variant, None)
    return list(spans)


def copy_schema(schema: dict[str, Any] | None, fields: list[str] | tuple[str, ...], text: str,
                stop_words: dict[str, list[str]] | None = None) -> dict[str, Any] | None:
    """`schema` with every free string property named in `fields` restricted to the spans of `text`, less the
    spans made of nothing but that field's `stop_words` and those holding a shape its stop words name (the schema
    itself when there is nothing to restrict)."""
    stop = {name: set(words) for name, words in (stop_words or {}).items() if words}
    words: dict[str, list[str]] = {}  # span -> its words, read once per request for every field
    shapes: dict[str, set[str]] = {}  # span -> its shapes, the same way (only where a field has shape stop words)
    kept: dict[str, list[str]] = {}  # field -> its spans less those its stop words cut, once per field

    def offered(name: str, prop: Any, spans: list[str]) -> Any:
        if name in stop and name not in kept:
            kept[name] = _without_stop_spans(spans, stop[name], words, shapes)
        return _copied(prop, kept.get(name, spans))

    return offered_per_request(schema, fields, lambda: request_spans(text), offered)


def span_words(span: str) -> list[str]:
    """The lower-cased words of a span as stop words count them ("What's up?" -> ["what's", "up"])."""
    return _SPAN_WORD.findall(span.lower())


_SPAN_WORD = re.compile(r"\w+(?:['’]\w+)*")
# a calendar date as digits: 2026-07-22, 22/07/2026, 7.22.26 (not a decimal, a fraction or a version)
_DATE = re.compile(r"(?<![\w/.-])(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.]\d{1,2}[/.]\d{2,4})(?![\w/-]|\.\d)")
_DIGITS = re.compile(r"\d")
SHAPES = ("#date", "#time", "#number")


def span_shapes(span: str) -> set[str]:
    """The shapes a span holds: "#date" (a date in digits), "#time" (a time of day as runtime.clock_times reads
    one), "#number" (digits outside those): "haircut 2026-07-22 at 11am" -> {"#date", "#time"}."""
    shapes = set()
    rest = span
    if _DATE.search(rest):
        shapes.add("#date")
        rest = _DATE.sub(" ", rest)
    clocks = [m for m in CLOCK.finditer(rest) if to_24h(m.group(0)) is not None]
    if clocks:
        shapes.add("#time")
        for match in reversed(clocks):
            rest = rest[:match.start()] + " " + rest[match.end():]
    if _DIGITS.search(rest):
        shapes.add("#number")
    return shapes


def _without_stop_spans(spans: list[str], stop: set[str], words: dict[str, list[str]],
                        shapes: dict[str, set[str]]) -> list[str]:
    """`spans` less those made of nothing but `stop` words and those holding a shape `stop` names; `words` and
    `shapes` cache each span's words and shapes across fields."""
    shaped = stop.intersection(SHAPES)
    kept = []
    for span in spans:
        if (found := words.get(span)) is None:
            found = words[span] = span_words(span)
        if found and all(w in stop for w in found):
            continue
        if shaped:
            if (held := shapes.get(span)) is None:
                held = shapes[span] = span_shapes(span)
            if shaped & held:
                continue
        kept.append(span)
    return kept


def _copied(prop: Any, spans: list[str]) -> Any:
    """A string property held to the spans (those matching its pattern, if it has one); as it was when it is no
    free string or no span matches its pattern."""
    if not isinstance(prop, dict) or prop.get("type") != "string" or any(k in prop for k in ("enum", "const", "format")):
        return prop
    if "pattern" in prop:
        try:
            spans = [s for s in spans if re.search(prop["pattern"], s)]
        except re.error:
            return prop
    return {**prop, "enum": spans} if spans else prop
