"""`grounded`: values the answer must copy from the input (names, message texts, search queries) appear in
the input as written. A teacher that rewords or recases them ("It's raining" for "text Sam it's raining")
teaches the student to paraphrase where the task asks it to copy."""

from __future__ import annotations

from typing import Any, Iterator

from kit.critic.base import Candidate, Verifier


def _spaced(text: str) -> str:
    return " ".join(text.split())


def string_fields(value: Any, path: str = "") -> Iterator[tuple[str, str, str]]:
    """(key, dotted path, string) for every string held under a key, at any depth of a JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(item, str):
                yield str(key), where, item
            else:
                yield from string_fields(item, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from string_fields(item, f"{path}[{i}]")


class GroundedCheck(Verifier):
    name = "grounded"

    def __init__(self, config):
        super().__init__()
        self.fields = set(config.fields)
        self.ignore_case = config.ignore_case

    async def check(self, candidate: Candidate) -> str | None:
        source = _spaced(candidate.input_text)
        if self.ignore_case:
            source = source.lower()
        for key, where, text in string_fields(candidate.answer.value):
            if key not in self.fields or not text.strip():
                continue
            wanted = _spaced(text).lower() if self.ignore_case else _spaced(text)
            if wanted not in source:
                return f"{where} {text[:80]!r} is not copied from the input"
        return None
