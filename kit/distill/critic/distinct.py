"""`distinct_outputs`: at most `max_per_output` kept samples may share one answer.

A teacher asked for several rewrites of one request tends to keep its details ("a 10-minute timer for pasta"
four times over); the student then learns that one answer for every request of its kind. Capping how often an
answer repeats spends the budget on other labels instead. JSON answers count by their canonical form, text by
its whitespace-normalized form.
"""

from __future__ import annotations

import json
from collections import Counter

from kit.distill.critic.base import Candidate, CriticContext, Verifier


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
        self.counts: Counter[str] = Counter()

    async def check(self, candidate: Candidate) -> str | None:
        return self.check_now(candidate)

    def check_now(self, candidate: Candidate) -> str | None:
        seen = self.counts[answer_key(candidate.answer.output)]
        if seen >= self.config.max_per_output:
            return f"{seen} kept samples already have this answer (max_per_output {self.config.max_per_output})"
        return None

    def admit(self, sample_id: str, candidate: Candidate) -> None:
        self.counts[answer_key(candidate.answer.output)] += 1
