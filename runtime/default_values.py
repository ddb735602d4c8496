"""Default values: the value a field of fixed choices takes when the request names none of its choices.

A weather request that names no day ("weather for Berlin") is asked for today; a small model that saw more
"tomorrow" than "today" in its training data answers tomorrow. A bundle may carry, per field whose schema lists
its choices (`enum`), the choice its training data took when the request wrote none of them (`default_values` in
its manifest: {"day": "today"}, learned when the dataset is written, kit.distill.default_values). For a request
that writes none of a field's choices, the schema then offers that field's default alone, which llama.cpp's
grammar and onnxruntime-genai's guidance enforce; a request that writes a choice ("tomorrow", "turn on wifi")
keeps all of them, and which one is still the model's choice. Standard library only: the runtime embeds it.
"""

from __future__ import annotations

import re
from typing import Any

from runtime.json_fields import with_named_properties

_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """The lower-cased letters-and-digits runs of `text` ("airplane_mode" -> ["airplane", "mode"],
    "tomorrow's" -> ["tomorrow", "s"], "Wi-Fi" -> ["wi", "fi"])."""
    return _WORD.findall(str(text).lower())


def writes(request_words: list[str], choice: Any) -> bool:
    """Whether a request (its `words`) writes `choice`: the choice's words in a row ("do_not_disturb" in "turn on
    do not disturb"), or run together ("wifi" in "wi-fi")."""
    wanted = words(choice)
    if not wanted:
        return False
    n = len(wanted)
    joined = "".join(wanted)
    for start in range(len(request_words)):
        if request_words[start:start + n] == wanted:
            return True
        run = ""
        for word in request_words[start:start + 4]:
            run += word
            if run == joined:
                return True
            if len(run) >= len(joined):
                break
    return False


def default_schema(schema: dict[str, Any] | None, defaults: dict[str, Any], text: str) -> dict[str, Any] | None:
    """`schema` with every `enum` property named in `defaults` held to its default where the request `text` writes
    none of its choices (the schema itself when nothing applies)."""
    if schema is None or not defaults:
        return schema
    request = words(text)
    return with_named_properties(schema, set(defaults), lambda name, prop: _held(prop, defaults[name], request))


def _held(prop: Any, default: Any, request: list[str]) -> Any:
    if not isinstance(prop, dict) or not isinstance(prop.get("enum"), list) or default not in prop["enum"]:
        return prop
    if any(writes(request, choice) for choice in prop["enum"] if isinstance(choice, str)):
        return prop
    return {**prop, "enum": [default]}
