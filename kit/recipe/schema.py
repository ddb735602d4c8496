"""The recipe schema: one YAML file describes a micro-expert; each section is a stage's config."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from export.config import ExportConfig
from kit.core.config import StrictModel
from kit.distill.config import CriticConfig, DataConfig, OutputConfig, Seed, TaskConfig, TeacherConfig
from kit.evaluate.config import EvalConfig
from trainers.config import StudentConfig, TrainConfig


class Recipe(StrictModel):
    version: Literal[1] = 1
    task: TaskConfig
    output: OutputConfig = OutputConfig()
    seeds: list[Seed] = Field(default_factory=list)
    seeds_file: Path | None = Field(None, description="JSONL of extra seeds (input, output, reasoning)")
    teacher: TeacherConfig = TeacherConfig()
    critic: CriticConfig = CriticConfig()
    data: DataConfig = DataConfig()
    student: StudentConfig = StudentConfig()
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()
    eval: EvalConfig = EvalConfig()

    @property
    def student_system_prompt(self) -> str | None:
        """What the trained student sees as its system prompt (None: no system message)."""
        prompt = self.task.effective_system_prompt if self.student.system_prompt is None else self.student.system_prompt
        return prompt or None
