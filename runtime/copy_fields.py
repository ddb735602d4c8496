"""Copied fields: JSON string values that must be taken from the request word for word (a name, a city, a
message text, a search query) are held to the request's own words while decoding.

A bundle names such fields (`copy_fields` in its manifest, from the recipe's `grounded` check); for each
request the output schema's string properties of those names become an `enum` of the request's word spans
(those matching the property's pattern, when it has one and a span does), which llama.cpp's grammar enforces. A small model can no longer recase a city ("tokyo"), add a space
(" Cairo"), misspell it ("Buena Aires") or invent a value the request does not hold; which span it copies is
still its own choice. A bundle may also name, per copied field, its stop words (`copy_stop_words`, learned with
the dataset, kit.distill.stop_words): words most requests of the field's kind write ("set", "timer", "weather")
that no value of the field was ever made of alone. A span made of nothing but those is not offered, so a model
that wants a label where the request gives none cannot make one of "timer", nor a city of "today". Standard
library only: the runtime embeds it.
"""

from __future__ import annotations

import re
from typing import Any

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
    spans made of nothing but that field's `stop_words` (the schema itself when there is nothing to restrict)."""
    stop = {name: set(words) for name, words in (stop_words or {}).items() if words}
    words: dict[str, list[str]] = {}  # span -> its words, read once per request for every field
    kept: dict[str, list[str]] = {}  # field -> its spans less those of its stop words alone, once per field

    def offered(name: str, prop: Any, spans: list[str]) -> Any:
        if name in stop and name not in kept:
            kept[name] = _without_stop_spans(spans, stop[name], words)
        return _copied(prop, kept.get(name, spans))

    return offered_per_request(schema, fields, lambda: request_spans(text), offered)


def span_words(span: str) -> list[str]:
    """The lower-cased words of a span as stop words count them ("What's up?" -> ["what's", "up"])."""
    return _SPAN_WORD.findall(span.lower())


_SPAN_WORD = re.compile(r"\w+(?:['’]\w+)*")


def _without_stop_spans(spans: list[str], stop: set[str], words: dict[str, list[str]]) -> list[str]:
    """`spans` less those made of nothing but `stop` words; `words` caches each span's words across fields."""
    kept = []
    for span in spans:
        if (found := words.get(span)) is None:
            found = words[span] = span_words(span)
        if not found or not all(w in stop for w in found):
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
