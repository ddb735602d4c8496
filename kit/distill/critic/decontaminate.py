"""`decontaminate`: cut samples sharing word n-grams with the eval set (inputs with inputs; outputs with
outputs when the recipe asks)."""

from __future__ import annotations

import json
from pathlib import Path

from kit.core.errors import UserError
from kit.distill.critic.base import Candidate, CriticContext, Verifier, input_text, words


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    tokens = words(text)
    if len(tokens) < n:  # a short text counts as one n-gram of its own, so exact copies are still caught
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def eval_texts(path: Path, key: str) -> list[str]:
    """The eval file's `key` ("input" or "output") of every row, as text."""
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{number}: not valid JSON; each line of the eval file is one JSON object") from None
        if key in row:
            value = row[key]
            texts.append(value if isinstance(value, str) else input_text(value))
    return texts


class DecontaminateCheck(Verifier):
    type = "decontaminate"

    def __init__(self, config, context: CriticContext):
        super().__init__(config, context)
        self.eval_ngrams: dict[str, set[tuple[str, ...]]] = {}
        if context.eval_file is None:
            self.notes.append("no eval.file in the recipe: nothing to decontaminate against")
            return
        for field in config.fields:
            self.eval_ngrams[field] = set().union(*(ngrams(t, config.ngram)
                                                    for t in eval_texts(context.eval_file, field)))

    async def check(self, candidate: Candidate) -> str | None:
        if not self.eval_ngrams:
            return None
        mine = {"input": candidate.input_text, "output": candidate.answer.output}
        shared = set().union(*(ngrams(mine[field], self.config.ngram) & eval_ngrams
                               for field, eval_ngrams in self.eval_ngrams.items()))
        if len(shared) >= self.config.min_shared:
            example = " ".join(sorted(shared)[0])
            return f"shares {len(shared)} {self.config.ngram}-gram(s) with the eval set, e.g. '{example[:80]}'"
        return None
