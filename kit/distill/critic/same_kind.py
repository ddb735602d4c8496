"""`same_kind`: a rewrite of a seed answers with the seed's kind of answer.

Evolutions rewrite a seed to vary it: other names and numbers, other wording, a casual tone. A small teacher
asked so now and then drifts off the request: a seed "text Maria that I'm running late" rewritten "in other
words" comes back as "Maria, what time did you start running?", which it rightly answers with no tool at all.
Each such sample is right on its own, but together they teach the student that a message to Maria is no task
(one tool-calling build kept 12 of them, 9 answered `none`, against 33 `none` samples in all). So a sample
rewritten from a seed whose answer takes another branch of the output schema's top-level `oneOf` / `anyOf` than
the seed's own answer (another tool of a router) is cut, the reason naming both. Fresh inputs, written for a
topic, are not checked: they are where new kinds come from. Outputs without such a schema (free text, SQL, a
schema without branches) pass. No teacher call.
"""

from __future__ import annotations

import json
from typing import Any

from kit.distill.critic.base import Candidate, CriticContext, Verifier


class SameKindCheck(Verifier):
    type = "same_kind"

    def __init__(self, config, context: CriticContext):
        super().__init__(config, context)
        self.branches = schema_branches(context.schema)
        self.seed_kinds = [answer_kind(_parsed(output), self.branches) for output in context.seed_outputs]

    async def check(self, candidate: Candidate) -> str | None:
        seed = candidate.seed
        if not self.branches or seed is None or not 0 <= seed < len(self.seed_kinds):
            return None
        wanted = self.seed_kinds[seed]
        kind = answer_kind(candidate.answer.value, self.branches)
        if wanted is None or kind is None or kind == wanted:
            return None
        return f"rewritten from seed {seed} ({self.name(wanted)}) but answered as {self.name(kind)}"

    def name(self, kind: int) -> str:
        """A branch as its fixed values say it ("tool=none"), or by its place ("branch 3")."""
        fixed = [f"{key}={prop['const']}" for key, prop in self.branches[kind][1].get("properties", {}).items()
                 if isinstance(prop, dict) and "const" in prop]
        return ", ".join(fixed) or f"branch {kind}"


def schema_branches(schema: dict[str, Any] | None) -> list[tuple[Any, dict[str, Any]]]:
    """(validator, branch) for each branch of the schema's top-level `oneOf` (or `anyOf`); [] without them. A
    branch is checked together with the rest of the schema (its type, `$defs`, shared properties)."""
    if not isinstance(schema, dict):
        return []
    branches = schema.get("oneOf") or schema.get("anyOf")
    if not isinstance(branches, list) or len(branches) < 2:
        return []
    from jsonschema import Draft202012Validator  # lazy: jsonschema is slow to import

    rest = {key: value for key, value in schema.items() if key not in ("oneOf", "anyOf")}
    return [(Draft202012Validator({**rest, "allOf": [branch]}), branch) for branch in branches
            if isinstance(branch, dict)]


def answer_kind(value: Any, branches: list[tuple[Any, dict[str, Any]]]) -> int | None:
    """The index of the first branch `value` is valid under; None when it fits none (or there are none)."""
    for number, (validator, _) in enumerate(branches):
        if validator.is_valid(value):
            return number
    return None


def _parsed(output: Any) -> Any:
    if not isinstance(output, str):
        return output
    try:
        return json.loads(output)
    except ValueError:
        return None
