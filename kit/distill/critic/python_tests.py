"""`python`: run the answer's code with the recipe's tests in the sandbox (kit.distill.sandbox)."""

from __future__ import annotations

import asyncio
import os

from kit.distill.critic.base import Candidate, CriticContext, Verifier, field_of
from kit.distill.sandbox import run_python


class PythonCheck(Verifier):
    type = "python"

    def __init__(self, config, context: CriticContext):
        super().__init__(config, context)
        self.tests = config.tests if config.tests is not None else config.tests_file.read_text(encoding="utf-8")
        self._slots = asyncio.Semaphore(max(1, os.cpu_count() or 1))

    async def check(self, candidate: Candidate) -> str | None:
        code, problem = field_of(candidate.answer, self.config.field, "code")
        if problem:
            return problem
        program = f"{code}\n\n# --- recipe tests ---\n{self.tests}\n"
        async with self._slots:
            result = await asyncio.to_thread(run_python, program, timeout_s=self.config.timeout_s,
                                             memory_mb=self.config.memory_mb)
        return None if result.ok else result.reason
