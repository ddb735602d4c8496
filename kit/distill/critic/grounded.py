"""`grounded`: values the answer must copy from the input (names, message texts, search queries) appear in
the input as written. A teacher that rewords or recases them ("It's raining" for "text Sam it's raining")
teaches the student to paraphrase where the task asks it to copy."""

from __future__ import annotations

from typing import Any, Iterator

from kit.distill.critic.base import Candidate, CriticContext, Verifier


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
    type = "grounded"

    def __init__(self, config, context: CriticContext):
        super().__init__(config, context)
        self.fields = set(config.fields)
        self.ignore_case = config.ignore_case

    def _form(self, text: str) -> str:
        """Text as compared: runs of whitespace as one space, lowercased when case is ignored."""
        spaced = " ".join(text.split())
        return spaced.lower() if self.ignore_case else spaced

    async def check(self, candidate: Candidate) -> str | None:
        source = self._form(candidate.input_text)
        for key, where, text in string_fields(candidate.answer.value):
            if key in self.fields and text.strip() and self._form(text) not in source:
                return f"{where} {text[:80]!r} is not copied from the input"
        return None
