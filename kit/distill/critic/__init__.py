"""The critic: the recipe's verifiers, in order; each rejection is kept with the verifier's name and reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kit.distill.critic.base import Answer, Candidate, Rejection, Verifier, words
from kit.distill.critic.decontaminate import DecontaminateCheck
from kit.distill.critic.dedup import DedupCheck
from kit.distill.critic.grounded import GroundedCheck
from kit.distill.critic.json_schema import JsonSchemaCheck
from kit.distill.critic.judge import JudgeCheck
from kit.distill.critic.python_tests import PythonCheck
from kit.distill.critic.sql import SqlCheck


class Critic:
    def __init__(self, verifiers: list[Verifier]):
        self.verifiers = verifiers
        names = [v.name for v in verifiers]
        for i, verifier in enumerate(verifiers):  # two verifiers of one type get numbered names
            if names.count(verifier.name) > 1:
                verifier.name = f"{verifier.name}#{names[:i + 1].count(verifier.name)}"

    async def review(self, candidate: Candidate) -> Rejection | None:
        """Run every verifier in order; the first that objects names the rejection. Before any of them: an
        input that already holds its own answer teaches nothing (teachers sometimes write the answer in)."""
        if answer_in_input(candidate):
            return Rejection("input", "the input already contains its answer")
        for verifier in self.verifiers:
            reason = await verifier.check(candidate)
            if reason is not None:
                return Rejection(verifier.name, reason)
        return None

    def recheck(self, candidate: Candidate) -> Rejection | None:
        """Stateful checks again, with no await before the sample is written (concurrent near-duplicates)."""
        for verifier in self.verifiers:
            if verifier.stateful and (reason := verifier.check_now(candidate)) is not None:
                return Rejection(verifier.name, reason)
        return None

    def admit(self, sample_id: str, candidate: Candidate) -> None:
        for verifier in self.verifiers:
            verifier.admit(sample_id, candidate)

    @property
    def notes(self) -> list[str]:
        return [f"{v.name}: {note}" for v in self.verifiers for note in v.notes]


def answer_in_input(candidate: Candidate, min_words: int = 3) -> bool:
    """True when the (normalized) answer of at least `min_words` words appears inside the input."""

    answer = words(candidate.answer.output)
    if len(answer) < min_words:
        return False
    return f" {' '.join(answer)} " in f" {' '.join(words(candidate.input_text))} "


def build_critic(verifier_configs: list[Any], *, schema: dict[str, Any] | None, eval_file: Path | None,
                 seed_inputs: list[str], judge_client, task_description: str) -> Critic:
    """Verifiers from the recipe's `critic.verifiers`; `judge_client(config)` gives the judge its teacher."""
    built: list[Verifier] = []
    for config in verifier_configs:
        if config.type == "json_schema":
            built.append(JsonSchemaCheck(config, schema))
        elif config.type == "sql":
            built.append(SqlCheck(config))
        elif config.type == "python":
            built.append(PythonCheck(config))
        elif config.type == "judge":
            built.append(JudgeCheck(config, judge_client(config), task_description))
        elif config.type == "grounded":
            built.append(GroundedCheck(config))
        elif config.type == "dedup":
            built.append(DedupCheck(config, seed_inputs))
        elif config.type == "decontaminate":
            built.append(DecontaminateCheck(config, eval_file))
        else:
            raise ValueError(f"no verifier for type {config.type!r}")
    return Critic(built)


__all__ = ["Answer", "Candidate", "Critic", "Rejection", "Verifier", "build_critic"]
