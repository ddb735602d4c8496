"""`decontaminate`: cut a sample that covers much of one eval item (inputs with inputs; outputs with outputs
when the recipe asks).

The rule is a share, not a count: a sample is contamination when it holds at least `max_coverage` of one eval
item's word n-grams, and more than one of them. A copy or a light paraphrase of an eval question covers most of
that question's n-grams and is cut; a generic phrase the two happen to share ("what is the average number of",
"wake me up at") covers a small part of any one item and is kept, even of a five-word item, where it is one
n-gram of two. An item shorter than n words counts as one n-gram of its own length, so an exact copy of a short
request is still caught. A word keeps its inner apostrophes, colons and points ("what's", "7:30", "2.5"), so a
contraction or a time does not count as two words of a stock phrase.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from kit.core.errors import UserError
from kit.distill.critic.base import Candidate, CriticContext, Verifier, input_text

_WORD = re.compile(r"\w+(?:['’:.]\w+)*")


def _words(text: str) -> list[str]:
    """The words of `text`, lower-cased, each with its inner apostrophes, colons and points ("what's", "7:30"):
    unlike `critic.base.words`, which dedup uses, "what's" is one word here, not two."""
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    tokens = _words(text)
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


class EvalItems:
    """The eval set's texts of one field as n-gram sets, indexed by n-gram so a check looks only at the items
    that share something with the sample."""

    def __init__(self, texts: list[str], n: int):
        self.n = n
        self.texts = texts
        self.grams = [ngrams(text, n) for text in texts]
        self.lengths = sorted({len(g) for gs in self.grams for g in gs})  # short items hold shorter grams
        self.index: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for number, grams in enumerate(self.grams):
            for gram in grams:
                self.index[gram].append(number)

    def most_covered(self, text: str) -> tuple[float, int | None]:
        """The largest share of one eval item's n-grams that `text` holds, and that item's number; an item counts
        only when the text holds more than one of its n-grams (or its only one)."""
        tokens = _words(text)
        mine = {tuple(tokens[i:i + k]) for k in self.lengths for i in range(len(tokens) - k + 1)}
        hits: dict[int, int] = defaultdict(int)
        for gram in mine:
            for number in self.index.get(gram, ()):
                hits[number] += 1
        best, item = 0.0, None
        for number, count in hits.items():
            if count < min(2, len(self.grams[number])):
                continue
            share = count / len(self.grams[number])
            if share > best:
                best, item = share, number
        return best, item


class DecontaminateCheck(Verifier):
    type = "decontaminate"

    def __init__(self, config, context: CriticContext):
        super().__init__(config, context)
        self.input_only = list(config.fields) == ["input"]
        self.items: dict[str, EvalItems] = {}
        if context.eval_file is None:
            self.notes.append("no eval.file in the recipe: nothing to decontaminate against")
            return
        for field in config.fields:
            self.items[field] = EvalItems(eval_texts(context.eval_file, field), config.ngram)
        self.notes.append(f"decontaminate rule: cut a sample holding >= {config.max_coverage:.0%} of one eval "
                          f"item's word {config.ngram}-grams, and more than one ({', '.join(config.fields)})")

    @property
    def rule(self) -> dict:
        return {"ngram": self.config.ngram, "max_coverage": self.config.max_coverage, "min_ngrams": 2,
                "fields": list(self.config.fields)}

    async def check(self, candidate: Candidate) -> str | None:
        for field, items in self.items.items():
            share, item = items.most_covered(candidate.input_text if field == "input" else candidate.answer.output)
            if item is not None and share >= self.config.max_coverage:
                return (f"covers {share:.0%} of eval item {item + 1}'s {self.config.ngram}-grams ({field}: "
                        f"'{items.texts[item][:80]}')")
        return None
