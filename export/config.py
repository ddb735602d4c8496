"""Typed configuration of the export stage (the recipe's `export:` section)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from kit.core.config import StrictModel
from runtime.manifest import GenerationDefaults as ManifestGenerationDefaults

GGUFType = Literal["F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_0", "Q3_K_M", "Q2_K"]
OnnxQuant = Literal["int8", "int4"]
OnnxVariant = Literal["fp32", "int8", "int4"]
_MANIFEST_DEFAULTS = ManifestGenerationDefaults()


def check_shipped_are_made(ship: list[str], made: list[str], always_made: str, ship_key: str, made_key: str) -> None:
    """A shipped artifact must be one the stage makes (`always_made` is made whatever the list says)."""
    missing = [name for name in ship if name != always_made and name not in made]
    if missing:
        raise ValueError(f"{ship_key} names {missing}, which {made_key} does not make; add them to {made_key}")


GenaiVariant = Literal["int4", "int4-mixed", "int8", "fp32"]


class OnnxSettings(StrictModel):
    enabled: bool = True
    quantize: list[OnnxQuant] = Field(default_factory=lambda: ["int8"])
    ship: list[OnnxVariant] = Field(default_factory=lambda: ["int8"], description="ONNX variants copied into the bundle "
                                    "(with `quantize` also empty, optimum's export is skipped: onnxruntime-genai only)")
    genai: list[GenaiVariant] = Field(default_factory=list, description="onnxruntime-genai models made by its model "
                                      "builder (int4: MatMulNBits with int8 activations on CPU; int4-mixed: k-quant "
                                      "int4 with int8 where it matters; int8: every MatMul at 8 bits); served with "
                                      "JSON-schema guidance")
    genai_ship: list[GenaiVariant] = Field(default_factory=list, description="onnxruntime-genai variants copied into "
                                           "the bundle (loaded before optimum's ONNX when the bundle has no GGUF)")
    int8_keep_float: list[str] = Field(default_factory=lambda: ["down_proj", "fc2", "dense_4h_to_h"],
                                       description="MatMuls whose node name contains one of these stay float in int8")

    @model_validator(mode="after")
    def _shipped_are_made(self) -> "OnnxSettings":
        check_shipped_are_made(self.ship, self.quantize, "fp32", "onnx.ship", "onnx.quantize")
        check_shipped_are_made(self.genai_ship, self.genai, "", "onnx.genai_ship", "onnx.genai")
        return self


class GenerationDefaults(StrictModel):
    """The recipe's sampling defaults, validated; the values come from the bundle manifest's own defaults."""

    max_tokens: int = Field(_MANIFEST_DEFAULTS.max_tokens, ge=1)
    temperature: float = Field(_MANIFEST_DEFAULTS.temperature, ge=0.0, le=2.0)
    top_p: float = Field(_MANIFEST_DEFAULTS.top_p, gt=0.0, le=1.0)
    top_k: int = Field(_MANIFEST_DEFAULTS.top_k, ge=0)
    repeat_penalty: float = Field(_MANIFEST_DEFAULTS.repeat_penalty, gt=0.0)
    stop: list[str] = Field(default_factory=lambda: list(_MANIFEST_DEFAULTS.stop))


class ExportConfig(StrictModel):
    gguf_types: list[GGUFType] = Field(default_factory=lambda: ["F16", "Q8_0", "Q4_K_M"])
    ship: list[GGUFType] = Field(default_factory=lambda: ["Q4_K_M"], description="GGUFs copied into the bundle")
    onnx: OnnxSettings = OnnxSettings()
    imatrix: bool = Field(True, description="quantize k-quants and other low-bit types with an importance matrix "
                          "computed by llama-imatrix on the task's training rows (needs llama.cpp's tools, built by "
                          "scripts/setup.sh; without them the export says so and quantizes without one)")
    imatrix_rows: int = Field(512, ge=1, description="training rows the importance matrix is computed on")
    verify_tokens: int = Field(32, ge=1, description="greedy tokens compared against the merged model")
    lora_adapter: bool = Field(False, description="also ship the LoRA adapter as a GGUF (llama.cpp's "
                               "convert_lora_to_gguf.py) with the unmerged base at the first shipped type, so that "
                               "`kit serve A B` serves experts of one student on one shared base")
    generation: GenerationDefaults = GenerationDefaults()
    gguf_pre_tokenizer: str | None = Field(
        None, description="llama.cpp pre-tokenizer name (e.g. gpt-2) written when llama.cpp's converter does not "
        "recognise the tokenizer; a model that came from a GGUF keeps its own")
    threads: int | None = Field(None, ge=1, description="CPU threads for quantization and verification "
                                "(default: each library's own choice; 1 is fastest on a busy machine)")
    verify_rows: int = Field(16, ge=0, description="validation rows scored in verification (besides the fixed set)")
    max_perplexity_ratio: float = Field(1.25, gt=1.0, description="a quantized artifact above this perplexity "
                                        "ratio to the merged model fails verification and is not shipped")
    min_top1_agreement: float = Field(0.6, ge=0.0, le=1.0, description="a quantized artifact whose next-token "
                                      "top-1 agrees with the merged model less often fails verification")

    @model_validator(mode="after")
    def _shipped_are_made(self) -> "ExportConfig":
        check_shipped_are_made(self.ship, self.gguf_types, "F16", "ship", "gguf_types")
        return self


class BundleInfo(StrictModel):
    """What the bundle says about the expert beyond the artifacts (from the recipe)."""

    name: str
    task: str = ""
    system_prompt: str | None = None
    output_format: str = "text"
    output_schema: dict[str, Any] | None = None
    copy_fields: list[str] = Field(default_factory=list, description="JSON keys the runtime decodes as spans of "
                                                                     "the request (runtime.copy_fields)")
    copy_stop_words: dict[str, list[str]] = Field(
        default_factory=dict, description="per copied field, the words no span offered for it may be made of alone "
                                          "(runtime.copy_fields)")
    named_choices: dict[str, list[str]] = Field(
        default_factory=dict, description="per enum field, the choices a request that names one of them alone is "
                                          "held to (runtime.named_choices)")
    derived_numbers: dict[str, list[int | float]] = Field(
        default_factory=dict, description="JSON number fields the student writes as arithmetic over the request's "
                                          "numbers, with their factors (runtime.derived_numbers)")
    unit_factors: dict[str, dict[str, int | float]] = Field(
        default_factory=dict, description="per derived number field, the factor each unit word written after a "
                                          "request number takes (runtime.derived_numbers)")
    clock_fields: list[str] = Field(default_factory=list, description="24-hour time keys the student copies as the "
                                                                      "request writes them (runtime.clock_times)")
    no_repeat_fields: list[str] = Field(default_factory=list, description="string keys dropped where they repeat the "
                                        "words a derived value beside them was made from (runtime.answer_rules)")
    eval: dict[str, Any] = Field(default_factory=dict)
    version: str = "0.1.0"


class ExportStageConfig(StrictModel):
    """What the export stage reads: the `export:` section, the bundle's description, and what to export."""

    export: ExportConfig = ExportConfig()
    bundle: BundleInfo
    base: str | None = Field(None, description="store name, GGUF, HF folder or hub id; default: the adapter's base")
    adapter: Path | None = Field(None, description="peft adapter folder merged into the base")
    dataset: Path | None = Field(None, description="the run's dataset; its validation split joins verification")
