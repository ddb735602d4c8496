"""Clock times: a 24-hour "HH:MM" value the answer takes from a time the request writes its own way ("6pm",
"10:45 p.m.", "9:30", "8 o'clock", "noon", a bare hour after "at": "at 7") is copied by the model as written and converted by the runtime.

A small model copies a span well and converts "4:15pm" to "16:15" badly. So a bundle may name such fields
(`clock_fields` in its manifest, learned from the training data by kit.distill.derived_values); for each request
the output schema's string property of that name may then also be one of the request's clock spans (an `enum`
llama.cpp's grammar enforces), and `resolve_value` turns a span back into "HH:MM". Standard library only.
"""

from __future__ import annotations

import re
from typing import Any, Collection

from runtime.json_fields import offered_per_request, with_named_values

_MERIDIEM = r"(?P<meridiem>[ap])\.?\s?m\.?(?![\w])"
# a word after "at N" that makes N a count, not an hour ("at 7 percent", "at 20 degrees", "at 5 minutes past")
_UNIT_AFTER = r"-?(?:percent|per\b|degrees?|minutes?|mins?\b|hours?|hrs?\b|h\b|seconds?|secs?\b|times\b|x\b)"
CLOCK = re.compile(
    r"(?<![\w:./-])(?:"
    rf"(?P<h1>\d{{1,2}})(?:[:.](?P<m1>\d{{2}}))?\s?{_MERIDIEM}"  # 6pm, 4:15pm, 10:45 p.m., 7.30 am
    r"|(?P<h2>\d{1,2}):(?P<m2>\d{2})(?![\d:])"                  # 9:30, 18:45
    r"|(?P<h3>\d{1,2})\s?o'?clock\b"                            # 8 o'clock
    rf"|at\s(?P<h4>\d{{1,2}})(?!\d|[:.,]\d|\s?(?:[ap]\.?\s?m\b|o'?clock|%|{_UNIT_AFTER}))"  # at 7 (a bare hour)
    r"|(?P<word>noon|midday|midnight)\b)",
    re.IGNORECASE)
HH_MM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def to_24h(span: str) -> str | None:
    """"HH:MM" for a clock span as a request writes it; None when it is no valid time of day."""
    match = CLOCK.fullmatch(span.strip())
    if match is None:
        return None
    if match["word"]:
        return "00:00" if match["word"].lower() == "midnight" else "12:00"
    hour = int(match["h1"] or match["h2"] or match["h3"] or match["h4"])
    minute = int(match["m1"] or match["m2"] or 0)
    if match["meridiem"]:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if match["meridiem"].lower() == "p" else 0)
    if hour > 23 or minute > 59:
        return None
    return f"{hour:02d}:{minute:02d}"


def clock_spans(text: str) -> list[str]:
    """The times of day `text` writes, as written, in order, each once (only those that are valid times)."""
    return list(dict.fromkeys(m.group(0) for m in CLOCK.finditer(text) if to_24h(m.group(0)) is not None))


def clock_schema(schema: dict[str, Any] | None, fields: Collection[str], text: str) -> dict[str, Any] | None:
    """`schema` where each string property named in `fields` may also be one of the clock spans of `text` (the
    schema itself when there is nothing to offer)."""
    return offered_per_request(schema, fields, lambda: clock_spans(text),
                               lambda _, prop, spans: _with_spans(prop, spans))


def _with_spans(prop: Any, spans: list[str]) -> Any:
    if not isinstance(prop, dict) or prop.get("type") != "string" or "enum" in prop or "const" in prop:
        return prop
    return {"anyOf": [{"type": "string", "enum": spans}, prop]}


def resolve_value(value: Any, fields: Collection[str]) -> Any:
    """`value` (parsed JSON) with every clock span under a field of `fields` written as "HH:MM"."""
    return with_named_values(value, set(fields),
                             lambda _, item: (to_24h(item) or item) if isinstance(item, str) else item)
