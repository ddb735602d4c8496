"""The critic: the recipe's verifiers, in order; each rejection is kept with the verifier's step label and reason.

A registry maps the recipe's verifier `type` to its class; adding one is one new file and one entry here.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from kit.distill.critic.base import Answer, Candidate, CriticContext, Rejection, Verifier, words
from kit.distill.critic.confident import ConfidentCheck
from kit.distill.critic.decontaminate import DecontaminateCheck
from kit.distill.critic.dedup import DedupCheck
from kit.distill.critic.distinct import DistinctOutputsCheck
from kit.distill.critic.grounded import GroundedCheck
from kit.distill.critic.json_schema import JsonSchemaCheck
from kit.distill.critic.judge import JudgeCheck
from kit.distill.critic.python_tests import PythonCheck
from kit.distill.critic.same_kind import SameKindCheck
from kit.distill.critic.sql import SqlCheck

VERIFIERS: dict[str, type[Verifier]] = {cls.type: cls for cls in (
    JsonSchemaCheck, SqlCheck, PythonCheck, JudgeCheck, GroundedCheck, DedupCheck, DistinctOutputsCheck,
    DecontaminateCheck, ConfidentCheck, SameKindCheck)}


def step_label(verifier_type: str, step: int, repeated: bool) -> str:
    """How rejections and stats name a verifier: its type, with its place in `critic.verifiers` when the recipe
    lists that type more than once ("dedup", or "dedup (verifier 3)")."""
    return f"{verifier_type} (verifier {step})" if repeated else verifier_type


class Critic:
    """The checks that read only the input (`dedup`, `decontaminate` of inputs) come first, in the recipe's order,
    and run before the teacher is paid to answer an input; the checks of the answer follow, in the recipe's order."""

    def __init__(self, verifiers: list[Verifier]):
        counts = Counter(v.type for v in verifiers)
        for step, verifier in enumerate(verifiers, 1):
            verifier.step = step
            verifier.label = step_label(verifier.type, step, repeated=counts[verifier.type] > 1)
        self.verifiers = [v for v in verifiers if v.input_only] + [v for v in verifiers if not v.input_only]

    async def review(self, candidate: Candidate) -> Rejection | None:
        """Run every verifier in order; the first that objects names the rejection. After the input checks and
        before the others: an input that already holds its own answer teaches nothing (teachers sometimes write
        the answer in)."""
        if (rejection := await self.review_input(candidate)) is not None:
            return rejection
        if answer_in_input(candidate):
            return Rejection("input", "the input already contains its answer")
        for verifier in self.verifiers:
            if not verifier.input_only and (reason := await verifier.check(candidate)) is not None:
                return Rejection(verifier.label, reason)
        return None

    async def review_input(self, candidate: Candidate) -> Rejection | None:
        """The checks that read only the input (the candidate needs no answer yet)."""
        for verifier in self.verifiers:
            if verifier.input_only:
                reason = verifier.check_now(candidate) if verifier.stateful else await verifier.check(candidate)
                if reason is not None:
                    return Rejection(verifier.label, reason)
        return None

    def recheck_input(self, candidate: Candidate, rejection: Rejection | None) -> Rejection | None:
        """The first objection among the input checks as the sample is written, else `rejection` (what was found
        before). They come first, so the stateful ones name a near-duplicate whatever else objected, or whether
        the answer was asked for at all: samples are written in plan order and a check only learns of more, so an
        input cut before its answer is cut here too, and the outcome does not depend on timing."""
        for verifier in self.verifiers:
            if not verifier.input_only:
                break
            if verifier.stateful and (reason := verifier.check_now(candidate)) is not None:
                return Rejection(verifier.label, reason)
            if rejection is not None and rejection.verifier == verifier.label:
                return rejection
        return rejection

    def recheck(self, candidate: Candidate) -> Rejection | None:
        """The stateful checks of the answer again, with no await before the sample is written (concurrent
        near-duplicates); the input's own were asked just before (recheck_input)."""
        for verifier in self.verifiers:
            if verifier.stateful and not verifier.input_only and (reason := verifier.check_now(candidate)) is not None:
                return Rejection(verifier.label, reason)
        return None

    @property
    def stateful_labels(self) -> set[str]:
        """The labels of the checks that depend on what was kept before (rechecked when a sample is written)."""
        return {verifier.label for verifier in self.verifiers if verifier.stateful}

    def admit(self, sample_id: str, candidate: Candidate) -> None:
        for verifier in self.verifiers:
            verifier.admit(sample_id, candidate)

    @property
    def notes(self) -> list[str]:
        return [f"{v.label}: {note}" for v in self.verifiers for note in v.notes]


def answer_in_input(candidate: Candidate, min_words: int = 3) -> bool:
    """True when the (normalized) answer of at least `min_words` words appears inside the input."""

    answer = words(candidate.answer.output)
    if len(answer) < min_words:
        return False
    return f" {' '.join(answer)} " in f" {' '.join(words(candidate.input_text))} "


def build_critic(verifier_configs: list[Any], *, schema: dict[str, Any] | None, eval_file: Path | None,
                 seed_inputs: list[str], judge_client, task_description: str,
                 seed_outputs: list[Any] = ()) -> Critic:
    """Verifiers from the recipe's `critic.verifiers`; `judge_client(config)` gives the judge its teacher."""
    context = CriticContext(schema=schema, eval_file=eval_file, seed_inputs=tuple(seed_inputs),
                            seed_outputs=tuple(seed_outputs), judge_client=judge_client,
                            task_description=task_description)
    return Critic([verifier_class(config.type)(config, context) for config in verifier_configs])


def verifier_class(verifier_type: str) -> type[Verifier]:
    """The class registered for a recipe verifier `type`."""
    try:
        return VERIFIERS[verifier_type]
    except KeyError:
        raise ValueError(f"no verifier for type {verifier_type!r}; known types: {', '.join(sorted(VERIFIERS))}") from None


__all__ = ["Answer", "Candidate", "Critic", "CriticContext", "Rejection", "VERIFIERS", "Verifier", "build_critic",
           "step_label"]
