"""What the critic judges (a candidate sample) and the verifier interface."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence


@dataclass
class Answer:
    """One teacher answer: the parsed final answer, its string form and the reasoning before it."""

    value: Any
    output: str
    reasoning: str = ""
    # the least probability the teacher gave a token of this answer (kit.distill.critic.confident); None when
    # the teacher reports none
    least_p: float | None = None
    least_token: str = ""  # the token it was


@dataclass
class Candidate:
    index: int  # position in the generation plan; stable across re-runs
    input: str | dict[str, Any]
    answers: list[Answer]  # every answer the teacher gave (several with self-consistency)
    chosen: int = 0  # which answer becomes the sample
    origin: str = ""
    reference: Any = None  # an independent answer written with the input, when a verifier asks for one
    votes: int = 1
    label: Answer | None = None  # a label the vote composed field by field, equal to no single answer
    seed: int | None = None  # the seed (its index in the recipe's seeds) this input rewrites; None for a fresh one

    @property
    def input_text(self) -> str:
        return input_text(self.input)

    @property
    def answer(self) -> Answer:
        return self.label if self.label is not None else self.answers[self.chosen]


def input_text(value: str | dict[str, Any]) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


@dataclass(frozen=True)
class Rejection:
    verifier: str
    reason: str


@dataclass(frozen=True)
class CriticContext:
    """What verifiers may need beyond their own recipe entry; each takes the parts it uses."""

    schema: dict[str, Any] | None = None  # the recipe's output schema
    eval_file: Path | None = None
    seed_inputs: Sequence[str] = ()
    seed_outputs: Sequence[Any] = ()  # the seeds' answers, in the recipe's order
    judge_client: Callable[[Any], Any] | None = None  # judge_client(verifier config) -> its TeacherClient
    task_description: str = ""


class Verifier:
    """One check, built as `cls(config, context)` from its recipe entry. `check` returns a reason to reject, or
    None. Stateful verifiers (dedup) also `admit` every accepted sample; their check is repeated, synchronously,
    just before a sample is written."""

    type: str = ""  # the recipe's `type` that selects this class
    stateful: bool = False
    input_only: bool = False  # reads only the input: checked before the teacher is paid to answer it
    step: int = 0  # 1-based position among the critic's verifiers (set by the Critic)
    label: str = ""  # how rejections and stats name this step (set by the Critic)
    notes: list[str]

    def __init__(self, config, context: CriticContext) -> None:
        self.config = config
        self.notes = []

    async def check(self, candidate: Candidate) -> str | None:
        raise NotImplementedError

    def check_now(self, candidate: Candidate) -> str | None:
        """Stateful verifiers only: the same check, without awaiting."""
        raise NotImplementedError

    def admit(self, sample_id: str, candidate: Candidate) -> None:
        pass


def field_of(candidate_answer: Answer, field_name: str | None, what: str) -> tuple[str | None, str | None]:
    """The text a verifier runs: the answer itself, or one key of a JSON answer. Returns (text, problem)."""
    value = candidate_answer.value
    if field_name is not None:
        if not isinstance(value, dict) or not isinstance(value.get(field_name), str):
            return None, f"the answer has no string field '{field_name}' holding the {what}"
        return value[field_name], None
    if isinstance(value, str):
        return value, None
    return None, f"the answer is JSON; set the verifier's `field:` to the key holding the {what}"
