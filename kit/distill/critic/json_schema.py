"""`json_schema`: the answer must validate against the recipe's output schema."""

from __future__ import annotations

from kit.distill.critic.base import Candidate, CriticContext, Verifier


class JsonSchemaCheck(Verifier):
    type = "json_schema"

    def __init__(self, config, context: CriticContext):
        super().__init__(config, context)
        from jsonschema import Draft202012Validator

        self.validator = Draft202012Validator(context.schema or {})

    async def check(self, candidate: Candidate) -> str | None:
        from jsonschema.exceptions import best_match

        error = best_match(self.validator.iter_errors(candidate.answer.value))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "<answer>"
        return f"{where}: {error.message[:200]}"
