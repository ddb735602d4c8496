"""`decontaminate`: cut a sample that is a copy or a close paraphrase of one eval item (inputs with inputs; outputs
with outputs when the recipe asks).

The default rule (`rule: similarity`) compares the sample's set of words with each eval item's, each word weighted
by how rare it is among the eval items (ln(1 + items / items holding it); a word no item holds weighs most): a
sample is contamination when the weighted share of the words of both that they have in common is at least
`min_similarity` (0.7), and they share more than one word. Stock words ("what", "the", "average", "set") are in many
eval items and weigh little; what makes a question itself (a city, a number, a table's column, "delivered") weighs
much, so "What is the average rating given by customers from France?" is not "What is the average rating per
category?", while "What customers have never placed an order?" is "Which customers have never placed an order?".
Extra words count against a match too: a question that adds a condition to an eval question ("How many reviews are
there for the Smart Phone?" against "How many reviews are there?") asks something else.

`rule: coverage` is the n-gram rule: at least `max_coverage` of one eval item's word n-grams, and more than one
of them (an item shorter than n words counts as one n-gram of its own length).

A word keeps its inner apostrophes, colons and points ("what's", "7:30", "2.5"), so a contraction or a time is one
word.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
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


class EvalWordSets:
    """The eval set's texts of one field as word sets with rarity weights, indexed by word."""

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.sets = [set(_words(text)) for text in texts]
        counts = Counter(word for words in self.sets for word in words)
        items = len(self.sets)
        self.weights = {word: math.log(1 + items / count) for word, count in counts.items()}
        self.unseen = math.log(1 + items)  # a word no eval item holds is as rare as a word gets
        self.totals = [sum(self.weights[w] for w in words) for words in self.sets]
        self.index: dict[str, list[int]] = defaultdict(list)
        for number, words in enumerate(self.sets):
            for word in words:
                self.index[word].append(number)

    def most_similar(self, text: str) -> tuple[float, int | None]:
        """The highest similarity of `text` to one eval item (the weight of the words both hold over the weight of
        the words either holds), and that item's number; an item counts only when they share more than one word
        (or its only one)."""
        mine = set(_words(text))
        mine_total = sum(self.weights.get(w, self.unseen) for w in mine)
        best, item = 0.0, None
        for number in {n for word in mine for n in self.index.get(word, ())}:
            shared = self.sets[number] & mine
            if len(shared) < min(2, len(self.sets[number])):
                continue
            both = sum(self.weights[w] for w in shared)
            similarity = both / (self.totals[number] + mine_total - both)
            if similarity > best:
                best, item = similarity, number
        return best, item


class DecontaminateCheck(Verifier):
    type = "decontaminate"

    def __init__(self, config, context: CriticContext):
        super().__init__(config, context)
        self.input_only = list(config.fields) == ["input"]
        self.items: dict[str, EvalWordSets | EvalItems] = {}
        if context.eval_file is None:
            self.notes.append("no eval.file in the recipe: nothing to decontaminate against")
            return
        for field in config.fields:
            texts = eval_texts(context.eval_file, field)
            self.items[field] = EvalWordSets(texts) if config.rule == "similarity" else EvalItems(texts, config.ngram)
        fields = ", ".join(config.fields)
        if config.rule == "similarity":
            self.notes.append(f"decontaminate rule: cut a sample whose words are >= {config.min_similarity:.0%} like "
                              f"one eval item's (each word weighted by its rarity among the eval items; the words of "
                              f"both count), sharing more than one word ({fields})")
        else:
            self.notes.append(f"decontaminate rule: cut a sample holding >= {config.max_coverage:.0%} of one eval "
                              f"item's word {config.ngram}-grams, and more than one ({fields})")

    @property
    def rule(self) -> dict:
        if self.config.rule == "similarity":
            return {"rule": "similarity", "min_similarity": self.config.min_similarity,
                    "word_weight": "ln(1 + eval items / eval items holding the word)", "min_shared_words": 2,
                    "fields": list(self.config.fields)}
        return {"rule": "coverage", "ngram": self.config.ngram, "max_coverage": self.config.max_coverage,
                "min_ngrams": 2, "fields": list(self.config.fields)}

    async def check(self, candidate: Candidate) -> str | None:
        for field, items in self.items.items():
            text = candidate.input_text if field == "input" else candidate.answer.output
            if isinstance(items, EvalWordSets):
                similarity, item = items.most_similar(text)
                if item is not None and similarity >= self.config.min_similarity:
                    return (f"{similarity:.0%} like eval item {item + 1} (rarity-weighted words; {field}: "
                            f"'{items.texts[item][:80]}')")
                continue
            share, item = items.most_covered(text)
            if item is not None and share >= self.config.max_coverage:
                return (f"covers {share:.0%} of eval item {item + 1}'s {self.config.ngram}-grams ({field}: "
                        f"'{items.texts[item][:80]}')")
        return None
