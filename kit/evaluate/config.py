"""Typed configuration of the eval stage (the recipe's `eval:` section) and what the stage reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from kit.core.config import StrictModel
from kit.distill.config import CriticConfig, OutputConfig, Seed, TaskConfig, TeacherConfig


class EvalConfig(StrictModel):
    file: Path | None = Field(None, description="held-out JSONL with `input` and `output`, written by hand")
    metrics: list[Literal["exact_match", "json_valid", "json_schema_valid", "json_fields", "execution_accuracy",
                          "contains", "pass_rate"]] | None = Field(None, description="defaults from output.format")
    max_new_tokens: int = Field(256, ge=1)
    limit: int | None = Field(None, ge=1)
    latency_cases: int = Field(16, ge=1, description="cases timed one request at a time, as an app runs the "
                                                     "model (latency, decode tok/s, peak RSS)")
    batch: int = Field(8, ge=1, description="cases a GGUF or transformers target decodes together for its "
                                            "scores (greedy either way; several times faster on a CPU)")
    merged: bool = Field(True, description="score the merged model in transformers too; export already checks "
                                           "every GGUF against it (KL, top-1, greedy), and off saves most of the "
                                           "eval time of a 0.5B or larger student on a CPU")


class Target(StrictModel):
    """One model the eval stage scores."""

    name: str  # e.g. "base", "teacher", "merged", "gguf-Q4_K_M", "onnx-int8"
    kind: Literal["hf", "gguf", "onnx", "onnx-genai", "teacher"]
    path: str = ""
    # a trained student's derived values ({"derived_numbers": ..., "clock_fields": ...}): the forms it writes
    # them in are offered while decoding and turned back before scoring (runtime.answer_rules)
    derived: dict[str, Any] = Field(default_factory=dict)


class EvaluateConfig(StrictModel):
    """What the eval stage reads: the task and its output format, the seeds (the teacher's few-shot turns), the
    teacher, the critic's execution checks (SQL database, Python tests), the student, the shipped ONNX variants
    and the `eval:` section. `targets` None: base, teacher and everything the export stage made."""

    task: TaskConfig
    output: OutputConfig = OutputConfig()
    seeds: list[Seed] = Field(default_factory=list)
    teacher: TeacherConfig = TeacherConfig()
    critic: CriticConfig = CriticConfig()
    student: str
    student_system_prompt: str | None = None
    onnx_ship: list[str] = Field(default_factory=list)
    eval: EvalConfig = EvalConfig()
    include_teacher: bool = True
    targets: list[Target] | None = None
