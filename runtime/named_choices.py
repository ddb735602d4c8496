"""Named choices: a JSON `enum` field whose answer is the one choice the request names ("forecast for Cairo
tomorrow" -> day "tomorrow", "turn wifi off" -> state "off") is held to that choice while decoding.

A small model mixes up choices it was trained on ("tomorrow" answered "today" because most of its weather samples
said today). So a bundle may name such fields (`named_choices` in its manifest, learned from the training
data by kit.distill.named_choices: per field, the choices nearly every sample whose request names that choice
alone answers); for each request, such an `enum` property whose choices the request names exactly one of (as
words, an underscore or a hyphen read as a space: "do not disturb" names "do_not_disturb"), a named choice, is
narrowed to that choice, which llama.cpp's grammar enforces. A request naming none or several choices, or a
choice the data did not show as named ("on" in "disable wifi on the phone"), is decoded as before. Standard
library only.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Collection

from runtime.json_fields import with_named_properties


@lru_cache(maxsize=4096)  # a bundle has a few choices; each request asks for all of them again
def choice_pattern(choice: str) -> re.Pattern[str]:
    """The words of a choice as a request writes them: "do_not_disturb" matches "do not disturb", "Do-Not-Disturb"."""
    words = [w for w in re.split(r"[\s_-]+", choice.strip()) if w]
    return re.compile(r"(?<![\w-])" + r"[\s_-]+".join(map(re.escape, words)) + r"(?![\w-])", re.IGNORECASE)


def named_choices(text: str, choices: Collection[Any]) -> list[str]:
    """The string `choices` that `text` names, in the order given."""
    return [c for c in choices if isinstance(c, str) and c.strip() and choice_pattern(c).search(text)]


def named_schema(schema: dict[str, Any] | None, named: dict[str, list[str]] | None, text: str) -> dict[str, Any] | None:
    """`schema` with every `enum` property of a field in `named` ({field: its named choices}) narrowed to the one
    choice `text` names, where it names exactly one and that one is a named choice (left as it is otherwise; the
    schema itself when `named` is empty)."""
    if schema is None or not named:
        return schema
    return with_named_properties(schema, set(named), lambda name, prop: _narrowed(prop, text, named[name]))


def _narrowed(prop: Any, text: str, learned: list[str]) -> Any:
    if not isinstance(prop, dict) or not isinstance(prop.get("enum"), list):
        return prop
    found = named_choices(text, prop["enum"])
    return {**prop, "enum": found} if len(found) == 1 and found[0] in learned else prop
