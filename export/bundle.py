"""The bundle: verified artifacts, manifest.json (runtime/manifest.py), model card and Ollama Modelfile."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from export.config import BundleInfo, ExportConfig
from export.lora_gguf import adapter_type, link_or_copy
from export.modelfile import modelfile_text
from export.verify import ArtifactReport
from kit.core.files import atomic_output
from kit.core.version import __version__
from kit.models.base_model import BaseModel
from runtime.manifest import GenerationDefaults, Manifest, describe_file, write_manifest

ONNX_SIDE_FILES = {"tokenizer.json": "tokenizer", "tokenizer_config.json": "tokenizer",
                   "special_tokens_map.json": "tokenizer", "chat_template.jinja": "tokenizer",
                   "config.json": "config", "generation_config.json": "config"}


def shipped(reports: list[ArtifactReport], config: ExportConfig) -> list[ArtifactReport]:
    """The verified artifacts the config ships (a failed artifact never is)."""
    wanted = {("gguf", q) for q in config.ship}
    if config.onnx.enabled:
        wanted |= {("onnx", q) for q in config.onnx.ship} | {("onnx-genai", v) for v in config.onnx.genai_ship}
    order = ([("gguf", q) for q in config.ship] + [("onnx-genai", v) for v in config.onnx.genai_ship]
             + [("onnx", q) for q in config.onnx.ship])  # the runtime loads the first of each kind
    chosen = [r for r in reports if r.status == "ok" and (r.kind, r.quant) in wanted]
    return sorted(chosen, key=lambda r: order.index((r.kind, r.quant)))


@dataclass
class LoraParts:
    """What `export.lora_adapter` adds: the shared base GGUF (in microkit's cache), the adapter GGUF, their check."""

    base: Path
    adapter: Path
    summary: dict


def write_bundle(bundle_dir: Path, info: BundleInfo, base: BaseModel, config: ExportConfig, tokenizer,
                 reports: list[ArtifactReport], reference_ppl: float, lora: LoraParts | None = None) -> Manifest:
    """Copy the shipped artifacts and write manifest.json, README.md and (with a GGUF) the Modelfile; with `lora`,
    the adapter GGUF and (hard-linked where it can be) the base it applies to."""
    ship = shipped(reports, config)
    manifest = Manifest(
        name=info.name, version=info.version, task=info.task,
        base_model={"name": base.name, "spec": base.spec, "license": base.license,
                    **({"source_gguf": base.source_gguf.name} if base.source_gguf else {})},
        system_prompt=info.system_prompt, chat_template=tokenizer.chat_template, output_format=info.output_format,
        output_schema=info.output_schema, copy_fields=list(info.copy_fields),
        copy_stop_words=dict(info.copy_stop_words), named_choices=dict(info.named_choices),
        derived_numbers=dict(info.derived_numbers), unit_factors=dict(info.unit_factors),
        clock_fields=list(info.clock_fields),
        no_repeat_fields=list(info.no_repeat_fields),
        generation=GenerationDefaults(**config.generation.model_dump()),
        verification=_verification_summary(reports, ship, reference_ppl), eval=info.eval,
        microkit_version=__version__,
    )
    with atomic_output(bundle_dir) as partial:
        partial.mkdir(parents=True)
        files = _copy_artifacts(ship, partial)
        if lora is not None:
            shutil.copy2(lora.adapter, partial / lora.adapter.name)
            base_name = f"base-{lora.summary['base_quant']}.gguf"
            link_or_copy(lora.base, partial / base_name)
            files += [(partial / lora.adapter.name, "gguf-adapter", adapter_type(lora.summary["base_quant"])),
                      (partial / base_name, "gguf-base", lora.summary["base_quant"])]
            manifest.lora_adapter = {"adapter": lora.adapter.name, "base": base_name, **lora.summary}
            adapter_modelfile = partial / "Modelfile.adapter"  # Ollama: the shared base plus this expert's adapter
            adapter_modelfile.write_text(modelfile_text(base_name, tokenizer, info.system_prompt, config.generation,
                                                        adapter_name=lora.adapter.name), encoding="utf-8")
            files.append((adapter_modelfile, "other", None))
        ggufs = [r for r in ship if r.kind == "gguf"]
        if ggufs:
            modelfile = partial / "Modelfile"
            modelfile.write_text(modelfile_text(Path(ggufs[0].path).name, tokenizer, info.system_prompt,
                                                config.generation), encoding="utf-8")
            files.append((modelfile, "other", None))
        card = partial / "README.md"
        card.write_text(model_card(info, base, reports, ship, reference_ppl), encoding="utf-8")
        files.append((card, "other", None))
        manifest.files = [describe_file(partial, path, kind, quant) for path, kind, quant in files]
        write_manifest(partial, manifest)
    return manifest


def _copy_artifacts(ship: list[ArtifactReport], folder: Path) -> list[tuple[Path, str, str | None]]:
    """Copy the shipped GGUFs and ONNX files (with the ONNX side files) into `folder`; (path, kind, quant) of each."""
    files = []
    for report in ship:
        source = Path(report.path)
        if report.kind == "gguf":
            shutil.copy2(source, folder / source.name)
            files.append((folder / source.name, "gguf", report.quant))
        elif report.kind == "onnx-genai":  # the builder's whole folder: model, genai_config.json, tokenizer
            target = folder / source.name
            shutil.copytree(source, target)
            for part in sorted(p for p in target.iterdir() if p.is_file()):
                kind = "onnx-genai" if part.name == "model.onnx" else "onnx-genai-data"
                files.append((part, kind, report.quant))
        else:
            (folder / "onnx").mkdir(exist_ok=True)
            for part in sorted(source.parent.glob(f"{source.name}*")):  # model*.onnx and its external data
                shutil.copy2(part, folder / "onnx" / part.name)
                files.append((folder / "onnx" / part.name, "onnx" if part.suffix == ".onnx" else "onnx-data", report.quant))
    onnx_ship = [r for r in ship if r.kind == "onnx"]
    if onnx_ship:
        source_dir = Path(onnx_ship[0].path).parent
        for name, kind in ONNX_SIDE_FILES.items():
            if (source_dir / name).is_file():
                shutil.copy2(source_dir / name, folder / "onnx" / name)
                files.append((folder / "onnx" / name, kind, None))
    return files


def _verification_summary(reports: list[ArtifactReport], ship: list[ArtifactReport], reference_ppl: float) -> dict:
    shipped_names = {r.name for r in ship}
    return {
        "reference_perplexity": reference_ppl,
        "artifacts": {r.name: {"kind": r.kind, "quant": r.quant, "status": r.status, "shipped": r.name in shipped_names,
                               "bytes": r.bytes, "tokenization_identical": r.tokenization_identical,
                               "greedy_identical": r.greedy_identical, "top1_agreement": r.top1_agreement,
                               "perplexity": r.perplexity, "perplexity_ratio": r.perplexity_ratio,
                               "reasons": r.reasons} for r in reports},
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def model_card(info: BundleInfo, base: BaseModel, reports: list[ArtifactReport], ship: list[ArtifactReport],
               reference_ppl: float) -> str:
    shipped_names = {r.name for r in ship}
    rows = "\n".join(
        f"| {r.name} | {r.bytes / 1e6:.1f} MB | {'yes' if r.name in shipped_names else 'no'} | {r.status} | "
        f"{ {True: 'same', False: 'differs', None: '–'}[r.tokenization_identical]} | "
        f"{ {True: 'same', False: 'differs', None: 'n/a'}[r.greedy_identical]} | {_fmt(r.top1_agreement)} | "
        f"{_fmt(r.perplexity_ratio, 4)} |" for r in reports)
    evals = "\n".join(f"- {k}: {v}" for k, v in info.eval.items()) or "- no evaluation figures were recorded"
    gguf = next((r for r in ship if r.kind == "gguf"), None)
    source = f" (from `{base.source_gguf.name}`; its tokenizer is kept unchanged)" if base.source_gguf else ""
    return f"""# {info.name}

{info.task or 'A micro-expert made with microkit.'}

- **Base model:** {base.name}{source}, license {base.license}
- **Output:** {info.output_format}{' (JSON Schema in manifest.json)' if info.output_schema else ''}
- **System prompt:** {info.system_prompt or '(none)'}
- **Made with:** microkit {__version__}: LoRA adapter merged into the base, converted with llama.cpp's own
  `convert_hf_to_gguf.py`, quantized with llama.cpp, exported to ONNX with optimum and onnxruntime.

## Data provenance
Task data was distilled from a teacher model and filtered by the recipe's verifiers (see the run's
`data/stats.json`); the base model's own training data is described by its authors.

## Verification
Every artifact was checked against the merged model (transformers, float32; perplexity {reference_ppl:.3f}):
identical tokenization token by token, identical greedy output for the unquantized files, next-token top-1
agreement and perplexity ratio for the quantized ones. Failed artifacts are not shipped.

| artifact | size | shipped | status | tokenization | greedy | top-1 | ppl ratio |
| --- | --- | --- | --- | --- | --- | --- | --- |
{rows}

## Evaluation
{evals}

## Use
```bash
kit run . "your input"                 # microkit runtime (GGUF via llama.cpp, or ONNX via onnxruntime)
{f'ollama create {info.name} -f Modelfile && ollama run {info.name}' if gguf else '# (no GGUF shipped: no Modelfile)'}
```

## Intended use and limits
A small model tuned for one narrow task; outside it, expect mistakes. Quantized files trade a little
accuracy for size (see the table). Check outputs where they matter; validate structured output against
the schema in `manifest.json`.
"""
