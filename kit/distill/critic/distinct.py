"""`distinct_outputs`: at most `max_per_output` kept samples may share one answer for inputs alike.

A teacher asked for several rewrites of one request tends to keep its details ("a 10-minute timer for pasta"
four times over); the student then learns that one answer for every request of its kind. A sample is cut when
`max_per_output` kept samples already have its answer for inputs that share at least `similarity` of their
words with its input (Jaccard over word sets). Different requests that rightly share one answer (every request
no tool can serve, say) are kept. JSON answers count by their canonical form, text by its whitespace-normalized
form.
"""

from __future__ import annotations

import json
from collections import defaultdict

from kit.distill.critic.base import Candidate, CriticContext, Verifier, words


def answer_key(output: str) -> str:
    try:
        return json.dumps(json.loads(output), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (json.JSONDecodeError, TypeError):
        return " ".join(output.split())


class DistinctOutputsCheck(Verifier):
    type = "distinct_outputs"
    stateful = True

    def __init__(self, config, context: CriticContext):
        super().__init__(config, context)
        self.inputs: dict[str, list[set[str]]] = defaultdict(list)  # answer -> word sets of the kept inputs

    async def check(self, candidate: Candidate) -> str | None:
        return self.check_now(candidate)

    def check_now(self, candidate: Candidate) -> str | None:
        mine = set(words(candidate.input_text))
        alike = sum(_jaccard(mine, theirs) >= self.config.similarity
                    for theirs in self.inputs.get(answer_key(candidate.answer.output), ()))
        if alike >= self.config.max_per_output:
            return (f"{alike} kept samples already have this answer for inputs alike "
                    f"(max_per_output {self.config.max_per_output})")
        return None

    def admit(self, sample_id: str, candidate: Candidate) -> None:
        self.inputs[answer_key(candidate.answer.output)].append(set(words(candidate.input_text)))


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0
