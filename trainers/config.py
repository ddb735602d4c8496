"""Typed configuration of the training stage (the recipe's `train:` section)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from kit.core.config import StrictModel

DEFAULT_STUDENT = "smollm2-135m-instruct"


class LoraSettings(StrictModel):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' or module names")


class DistillSettings(StrictModel):
    enabled: bool = False
    teacher: str | None = Field(None, description="local HF teacher sharing the student's tokenizer")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of cross-entropy; 1-alpha weights KL")
    temperature: float = Field(2.0, gt=0.0)
    top_k: int = Field(32, ge=1, le=1024, description="teacher logits kept per position")


class TrainConfig(StrictModel):
    method: Literal["lora", "qlora", "full"] = Field(
        "lora", description="lora: a LoRA adapter; qlora: LoRA over 4-bit weights (CUDA); full: every weight "
                            "trained (students under ~500M; use a learning rate near 5e-5)")
    epochs: float = Field(3.0, gt=0)
    later_round_epochs: float | None = Field(None, gt=0, description="with data.rounds > 1: epochs of each round "
                                             "after the first, which starts from the previous round's adapter "
                                             "(default: epochs)")
    max_steps: int | None = Field(None, ge=1, description="overrides epochs when set")
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_seq_len: int = Field(1024, ge=32)
    packing: bool = True
    shared_prefix: bool = Field(True, description="run a prompt every row of a batch shares (template head, "
                                "system prompt) once per batch instead of once per row; exact, and off with "
                                "gradient checkpointing")
    gradient_checkpointing: bool = False
    rationales: bool = Field(False, description="distilling step-by-step: every training row with the teacher's "
                             "reasoning (data.reasoning: true) also trains that reasoning as a second task (the "
                             "request with an ask to explain, the reasoning as the answer); served experts are "
                             "asked the plain request and answer alone. About doubles the training rows")
    checkpoint_every: int = Field(50, ge=1, description="save a checkpoint every N optimizer steps")
    # a small student's validation loss turns up long before its answers stop improving (it grows surer of the
    # few tokens it still gets wrong): tool-calling, one build's data, shipped exact match 48.6% with the epoch of
    # lowest validation loss (epoch 2 of 5, stopped at 4), 64.5% with the last of 5 epochs, 71.0% after 8
    early_stopping_patience: int = Field(0, ge=0, description="epochs without validation improvement before "
                                                              "training stops; 0 = off (the default)")
    keep: Literal["best", "last"] = Field(
        "last", description="the weights the adapter ends with: last = the last step's (the default); best = the "
                            "epoch with the lowest validation loss")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # bf16 on CPU holds the frozen base in bf16 and the adapter in fp32, matmuls under autocast. On a 2-core AMX CPU
    # the 135M student's matmuls run 2.6x faster that way, but its shared-prefix attention backward 2.4x slower and
    # the casts cost what is left: a tool-calling build trained at 2.29 s/step in bf16 and 2.31 in fp32
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 on CUDA, fp32 on CPU; bf16 on CPU is an option (no faster on the measured "
                            "CPU path)")
    threads: int | None = Field(None, ge=1, description="CPU threads per process; default: usable cores / local processes")
    seed: int = 0
    lora: LoraSettings = LoraSettings()
    distill: DistillSettings = DistillSettings()


class StudentConfig(StrictModel):
    model: str = DEFAULT_STUDENT
    system_prompt: str | None = Field(
        None, description="the system prompt the student is trained and served with; default: the task's. "
                          "'' trains and serves without one: the task lives in the weights, and every "
                          "request is shorter (faster training and a faster first token)")


class TrainStageConfig(StrictModel):
    """What the train stage reads: the student, the system prompt it is trained with, the `train:` section."""

    student: str = DEFAULT_STUDENT
    system_prompt: str | None = Field(None, description="replaces each row's system message (None: none)")
    replace_system_prompt: bool = Field(True, description="false: train on each row's own system message")
    train: TrainConfig = TrainConfig()
    init_adapter: Path | None = Field(None, description="start from this LoRA adapter (a previous round's) "
                                                        "instead of a new one")
