"""The export stage: merge -> GGUF (convert, quantize) and ONNX (export, quantize) -> verify -> bundle."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console

from export.bundle import LoraParts, shipped, write_bundle
from export.config import ExportStageConfig
from export.gguf import make_ggufs, uses_imatrix
from export.llama_cpp_tools import tool
from export.lora_gguf import adapter_agreement, adapter_gguf, base_gguf
from export.merge import adapter_base, merge_adapter
from export.onnx_export import make_onnx
from export.onnx_genai import make_genai
from export.verify import (
    PROMPTS,
    ArtifactReport,
    build_probe,
    chat_prompt,
    reference_outputs,
    validation_prompts,
    validation_texts,
    verify_genai,
    verify_gguf,
    verify_onnx,
    verify_table,
    write_verify_json,
)
from kit.core.dataset import derived_values
from kit.core.errors import UserError
from kit.core.files import fingerprint
from kit.core.run_dir import RunDir
from kit.core.stage import StageManifest, StagePlan, config_dict, run_stage, write_stage_manifest
from kit.models.base_model import BaseModel, resolve_base
from kit.models.gguf_tokenizer import read_gguf_metadata
from runtime.manifest import MANIFEST_NAME

STAGE = "export"
console = Console(stderr=True)


def stage_inputs(base: BaseModel, adapter: Path | None, dataset: Path | None) -> dict[str, str]:
    inputs = {"base": base.spec}
    if base.source_gguf is not None:
        inputs["base_source_gguf"] = fingerprint(base.source_gguf)
    if adapter is not None:
        inputs["adapter"] = fingerprint(adapter)
    if dataset is not None and Path(dataset).is_dir():
        inputs["dataset"] = fingerprint(dataset)
    return inputs


class ExportStage:
    """The export stage under the one stage contract (kit.core.stage): writes run_dir.export and run_dir.bundle."""

    name = STAGE

    def folder(self, run_dir: RunDir) -> Path:
        return run_dir.export

    def plan(self, config: ExportStageConfig, run_dir: RunDir) -> StagePlan:
        adapter, base = config.adapter, config.base
        if adapter is not None and not Path(adapter).is_dir():
            raise UserError(f"adapter folder {adapter} does not exist; run the train stage first or pass --adapter")
        if base is None:
            if adapter is None:
                raise UserError("nothing to export: pass a base model (--base) and/or an adapter (--adapter)")
            base = adapter_base(Path(adapter))
        resolved = resolve_base(base)
        record = {"export": config_dict(config.export), "bundle": config_dict(config.bundle),
                  "bundle_dir": str(run_dir.bundle)}
        return StagePlan(record, stage_inputs(resolved, adapter, config.dataset), {"base": resolved})

    def make(self, config: ExportStageConfig, run_dir: RunDir, plan: StagePlan) -> StageManifest:
        import torch  # lazy: torch is only needed once there is work to do

        previous_threads = torch.get_num_threads()
        if config.export.threads:
            torch.set_num_threads(config.export.threads)
        try:
            return _export(config, run_dir, plan)
        finally:
            torch.set_num_threads(previous_threads)


EXPORT = ExportStage()


def run(config: ExportStageConfig, run_dir: RunDir, *, force: bool = False) -> StageManifest:
    """Export base (+ adapter) into run_dir.export, verify every artifact, write run_dir.bundle; skipped when
    the export is up to date (unless `force`)."""
    return run_stage(EXPORT, config, run_dir, force=force)


def _calibration(config, dataset: Path | None, tokenizer, system: str | None) -> list[str] | None:
    """The training rows an importance matrix is computed on; None (with a note) when none is wanted or the
    tools are not built."""
    if not config.imatrix or not any(uses_imatrix(q) for q in config.gguf_types):
        return None
    if tool("llama-imatrix") is None or tool("llama-quantize") is None:
        console.print("[yellow]llama.cpp's tools are not built: quantizing without an importance matrix "
                      "(run `bash scripts/setup.sh` to build them)[/yellow]")
        return None
    texts = validation_texts(dataset, tokenizer, system, config.imatrix_rows, split_name="train")
    return texts or None


def _lora_parts(config, base: BaseModel, adapter: Path | None, workdir: Path, ggufs: dict[str, Path],
                pre_tokenizer: str | None, prompts: list[str]) -> LoraParts:
    """The adapter GGUF, the shared base GGUF at the first shipped type, and how often base + adapter answers
    greedily as the merged GGUF of that type does."""
    if adapter is None or not (adapter / "adapter_config.json").is_file():
        raise UserError("export.lora_adapter needs a LoRA adapter (train.method lora or qlora); a fully fine-tuned "
                        "student has no adapter to ship: set export.lora_adapter to false")
    quant = config.ship[0]
    base_file = base_gguf(base, quant, pre_tokenizer, config.threads)
    adapter_file = adapter_gguf(adapter, base, workdir, quant)
    summary = adapter_agreement(base_file, adapter_file, ggufs[quant], prompts, config.verify_tokens,
                                config.threads)
    summary |= {"base_quant": quant, "adapter_bytes": adapter_file.stat().st_size,
                "base_bytes": base_file.stat().st_size, "merged_bytes": ggufs[quant].stat().st_size}
    console.print(f"[bold]export[/bold] LoRA adapter {adapter_file.stat().st_size / 1e6:.1f} MB on a shared {quant} base: "
                  f"{summary['identical']}/{summary['prompts']} greedy answers identical to the merged {quant}")
    return LoraParts(base_file, adapter_file, summary)


def _export(job: ExportStageConfig, run_dir: RunDir, plan: StagePlan) -> StageManifest:
    config, info, adapter, dataset = job.export, job.bundle, job.adapter, job.dataset
    workdir, bundle_dir, resolved = run_dir.export, run_dir.bundle, plan.context["base"]
    started = time.time()
    workdir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def step(name: str):
        timings[name] = time.time()
        console.print(f"[bold]export[/bold] {name} ...")

    step("merge")
    merged = merge_adapter(resolved, Path(adapter) if adapter else None, workdir / "merged")
    step("gguf")
    pre_tokenizer = config.gguf_pre_tokenizer
    if pre_tokenizer is None and resolved.source_gguf is not None:  # used only if the converter's hash check fails
        pre_tokenizer = read_gguf_metadata(resolved.source_gguf, ("tokenizer.ggml.pre",)).get("tokenizer.ggml.pre")
    from transformers import AutoTokenizer  # lazy: transformers is slow to import

    tokenizer = AutoTokenizer.from_pretrained(merged)
    calibration = _calibration(config, dataset, tokenizer, info.system_prompt)
    ggufs = make_ggufs(merged, workdir, list(config.gguf_types), pre_tokenizer, resolved.source_gguf, config.threads,
                       calibration)
    onnx, genai = {}, {}
    if config.onnx.enabled:
        if config.onnx.quantize or config.onnx.ship:  # optimum's export (nothing to make when both are empty)
            step("onnx")
            onnx = make_onnx(merged, workdir / "onnx", list(config.onnx.quantize), config.onnx.int8_keep_float)
        if config.onnx.genai:
            step("onnxruntime-genai")
            genai = make_genai(merged, workdir, list(config.onnx.genai))
    step("verify")
    validation = validation_texts(dataset, tokenizer, info.system_prompt, config.verify_rows)
    probe = build_probe(tokenizer, info.system_prompt, validation, config.verify_tokens)
    reference = reference_outputs(merged, tokenizer, probe, config.threads)
    gates = (config.max_perplexity_ratio, config.min_top1_agreement, config.threads)
    reports: list[ArtifactReport] = [verify_gguf(path, quant, probe, reference, *gates) for quant, path in ggufs.items()]
    reports += [verify_onnx(path, quant, probe, reference, *gates) for quant, path in onnx.items()]
    reports += [verify_genai(path, variant, probe, reference, *gates) for variant, path in genai.items()]
    write_verify_json(workdir / "verify.json", reference, probe, reports)
    console.print(verify_table(reports, reference.perplexity))
    if not shipped(reports, config):
        raise UserError(f"no artifact the recipe ships passed verification (see {workdir / 'verify.json'}); "
                        "ship another quantization or loosen export.max_perplexity_ratio / min_top1_agreement")
    lora = None
    if config.lora_adapter:
        step("lora adapter")
        lora = _lora_parts(config, resolved, Path(adapter) if adapter else None, workdir, ggufs, pre_tokenizer,
                           validation_prompts(dataset, tokenizer, info.system_prompt, config.verify_rows)
                           or [chat_prompt(tokenizer, p, info.system_prompt) for p in PROMPTS])
    step("bundle")
    if not (info.derived_numbers or info.clock_fields):  # the rules the dataset's answers follow go with the model
        info = info.model_copy(update=derived_values(dataset))
    manifest = write_bundle(bundle_dir, info, resolved, config, tokenizer, reports, reference.perplexity, lora)
    finished = time.time()
    marks = sorted(timings.items(), key=lambda kv: kv[1]) + [("end", finished)]
    figures = {
        "reference_perplexity": reference.perplexity,
        "validation_rows": len(validation),
        "imatrix_rows": len(calibration or []),
        "artifacts": {r.name: {"status": r.status, "bytes": r.bytes, "top1_agreement": r.top1_agreement,
                               "perplexity_ratio": r.perplexity_ratio, "greedy_identical": r.greedy_identical,
                               "tokenization_identical": r.tokenization_identical} for r in reports},
        "shipped": [f.path for f in manifest.files],
        "lora_adapter": lora.summary if lora else None,
        "failed": [r.name for r in reports if r.status != "ok"],
        "seconds": {name: round(marks[i + 1][1] - at, 2) for i, (name, at) in enumerate(marks[:-1])},
    }
    outputs = {"merged": "merged", "verify": "verify.json", "bundle": os.path.relpath(bundle_dir, workdir),
               "bundle_manifest": os.path.relpath(bundle_dir / MANIFEST_NAME, workdir),
               **{f"gguf_{q}": p.name for q, p in ggufs.items()},
               **{f"onnx_{q}": str(p.relative_to(workdir)) for q, p in onnx.items()},
               **{f"genai_{v}": str(p.relative_to(workdir)) for v, p in genai.items()}}
    stage = plan.manifest(STAGE, outputs=outputs, figures=figures, started=started, finished=finished)
    write_stage_manifest(workdir, stage)
    return stage
