"""The export stage: merge -> GGUF (convert, quantize) and ONNX (export, quantize) -> verify -> bundle."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from export.bundle import BundleInfo, shipped, write_bundle
from export.config import ExportConfig
from export.gguf import make_ggufs
from export.gguf_tokenizer import read_gguf_metadata
from export.merge import BaseModel, adapter_base, merge_adapter, resolve_base
from export.onnx_export import make_onnx
from export.verify import (ArtifactReport, build_probe, reference_outputs, validation_texts, verify_gguf,
                           verify_onnx, verify_table, write_verify_json)
from kit.errors import UserError
from kit.stage import StageManifest, config_dict, fingerprint, is_up_to_date, read_stage_manifest, write_stage_manifest

STAGE = "export"


def stage_inputs(base: BaseModel, adapter: Path | None, dataset: Path | None) -> dict[str, str]:
    inputs = {"base": base.spec}
    if base.source_gguf is not None:
        inputs["base_source_gguf"] = fingerprint(base.source_gguf)
    if adapter is not None:
        inputs["adapter"] = fingerprint(adapter)
    if dataset is not None and Path(dataset).is_dir():
        inputs["dataset"] = fingerprint(dataset)
    return inputs


def run(config: ExportConfig, workdir: Path, bundle_dir: Path, info: BundleInfo, adapter: Path | None = None,
        base: str | None = None, dataset: Path | None = None, console: Console | None = None,
        force: bool = False) -> StageManifest:
    """Export base (+ adapter) into workdir, verify every artifact, write the bundle; returns the stage manifest.

    base: store name, GGUF, HF folder or hub id; defaults to the one the adapter names.
    dataset: the run's HF dataset folder (its validation split joins the verification set).
    """
    console = console or Console(stderr=True)
    if adapter is not None and not Path(adapter).is_dir():
        raise UserError(f"adapter folder {adapter} does not exist; run the train stage first or pass --adapter")
    if base is None:
        if adapter is None:
            raise UserError("nothing to export: pass a base model (--base) and/or an adapter (--adapter)")
        base = adapter_base(Path(adapter))
    resolved = resolve_base(base)
    inputs = stage_inputs(resolved, adapter, dataset)
    stage_config = {"export": config_dict(config), "bundle": asdict(info), "bundle_dir": str(bundle_dir)}
    if not force and is_up_to_date(workdir, STAGE, stage_config, inputs) and (bundle_dir / "manifest.json").is_file():
        console.print(f"export is up to date in {workdir}")
        return read_stage_manifest(workdir)
    import torch

    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _export(config, workdir, bundle_dir, info, adapter, resolved, dataset, console, inputs, stage_config)
    finally:
        torch.set_num_threads(previous_threads)


def _export(config: ExportConfig, workdir: Path, bundle_dir: Path, info: BundleInfo, adapter: Path | None,
            resolved: BaseModel, dataset: Path | None, console: Console, inputs: dict[str, str],
            stage_config: dict) -> StageManifest:
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
    ggufs = make_ggufs(merged, workdir, list(config.gguf_types), pre_tokenizer, resolved.source_gguf, config.threads)
    onnx = {}
    if config.onnx.enabled:
        step("onnx")
        onnx = make_onnx(merged, workdir / "onnx", list(config.onnx.quantize), config.onnx.int8_keep_float)
    step("verify")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    validation = validation_texts(dataset, tokenizer, info.system_prompt, config.verify_rows)
    probe = build_probe(tokenizer, info.system_prompt, validation, config.verify_tokens)
    reference = reference_outputs(merged, tokenizer, probe, config.threads)
    gates = (config.max_perplexity_ratio, config.min_top1_agreement, config.threads)
    reports: list[ArtifactReport] = [verify_gguf(path, quant, probe, reference, *gates) for quant, path in ggufs.items()]
    reports += [verify_onnx(path, quant, probe, reference, *gates) for quant, path in onnx.items()]
    write_verify_json(workdir / "verify.json", reference, probe, reports)
    console.print(verify_table(reports, reference.perplexity))
    if not shipped(reports, config):
        raise UserError(f"no artifact the recipe ships passed verification (see {workdir / 'verify.json'}); "
                        "ship another quantization or loosen export.max_perplexity_ratio / min_top1_agreement")
    step("bundle")
    manifest = write_bundle(bundle_dir, info, resolved, config, tokenizer, reports, reference.perplexity)
    finished = time.time()
    marks = sorted(timings.items(), key=lambda kv: kv[1]) + [("end", finished)]
    figures = {
        "reference_perplexity": reference.perplexity,
        "validation_rows": len(validation),
        "artifacts": {r.name: {"status": r.status, "bytes": r.bytes, "top1_agreement": r.top1_agreement,
                               "perplexity_ratio": r.perplexity_ratio, "greedy_identical": r.greedy_identical,
                               "tokenization_identical": r.tokenization_identical} for r in reports},
        "shipped": [f.path for f in manifest.files],
        "failed": [r.name for r in reports if r.status != "ok"],
        "seconds": {name: round(marks[i + 1][1] - at, 2) for i, (name, at) in enumerate(marks[:-1])},
    }
    outputs = {"merged": "merged", "verify": "verify.json", "bundle": str(bundle_dir),
               **{f"gguf_{q}": p.name for q, p in ggufs.items()},
               **{f"onnx_{q}": str(p.relative_to(workdir)) for q, p in onnx.items()}}
    stage = StageManifest(stage=STAGE, config=stage_config, inputs=inputs, outputs=outputs, figures=figures,
                          started=started, finished=finished)
    write_stage_manifest(workdir, stage)
    return stage
