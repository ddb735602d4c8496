"""Typed configuration of the export stage (the recipe's `export:` section)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kit.config_base import StrictModel

GGUFType = Literal["F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_0", "Q3_K_M", "Q2_K"]
OnnxQuant = Literal["int8", "int4"]


class OnnxSettings(StrictModel):
    enabled: bool = True
    quantize: list[OnnxQuant] = Field(default_factory=lambda: ["int8"])


class GenerationDefaults(StrictModel):
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    repeat_penalty: float = Field(1.0, gt=0.0)
    stop: list[str] = Field(default_factory=list)


class ExportConfig(StrictModel):
    gguf_types: list[GGUFType] = Field(default_factory=lambda: ["F16", "Q8_0", "Q4_K_M"])
    ship: list[GGUFType] = Field(default_factory=lambda: ["Q4_K_M"], description="GGUFs copied into the bundle")
    onnx: OnnxSettings = OnnxSettings()
    verify_tokens: int = Field(32, ge=1, description="greedy tokens compared against the merged model")
    generation: GenerationDefaults = GenerationDefaults()
