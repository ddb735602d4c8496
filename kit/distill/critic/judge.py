"""`judge`: an LLM scores the sample against the recipe's rubric (0-10); below the threshold it is cut."""

from __future__ import annotations

import json

from kit.distill.critic.base import Candidate, CriticContext, Verifier
from kit.distill.teachers.base import TeacherClient

JUDGE_SCHEMA = {
    "type": "object",
    "properties": {"reason": {"type": "string"}, "score": {"type": "integer", "minimum": 0, "maximum": 10}},
    "required": ["reason", "score"],
}


class JudgeCheck(Verifier):
    type = "judge"

    def __init__(self, config, context: CriticContext):
        super().__init__(config, context)
        self.client: TeacherClient = context.judge_client(config)
        self.task = context.task_description

    def messages(self, candidate: Candidate) -> list[dict[str, str]]:
        system = ("You grade one answer to a task strictly against a rubric. First give a short reason, then an "
                  "integer score from 0 (useless or wrong) to 10 (fully correct). Reply with JSON only: "
                  '{"reason": "...", "score": 0}')
        user = (f"Task: {self.task}\nRubric: {self.config.rubric}\n\nInput:\n{candidate.input_text}\n\n"
                f"Answer:\n{candidate.answer.output}")
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    async def check(self, candidate: Candidate) -> str | None:
        params = self.client.sampling(seed=candidate.index, temperature=0.0, max_tokens=min(256, self.client.config.max_tokens))
        # a judge that cannot be reached raises: the item stays open for a re-run instead of being cut
        reply = await self.client.complete(self.messages(candidate), JUDGE_SCHEMA, params)
        try:
            verdict = json.loads(reply.text)
            score = float(verdict["score"])
        except (ValueError, KeyError, TypeError):
            return "judge reply unreadable"
        if score < self.config.threshold:
            return f"score {score:g} < {self.config.threshold:g}: {str(verdict.get('reason', ''))[:160]}"
        return None
