"""The probe stage of a failure-driven round: the round's trained student answers the round's probe pool
(held-out, critic-checked, teacher-labelled inputs: never the eval set, never validation) and its validation
split; answers scored below the recipe's primary metric's full mark against the teacher's label are failures,
and the next round's teacher writes new inputs like them.

Writes runs/<task>[/rounds/<n>]/probe/: failures.jsonl, probe.json (probed, failed, validation score) and, in
the last round, rounds.json and rounds.png (validation score per round).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import Field
from rich.console import Console

from export.gguf import convert_to_gguf
from export.merge import merge_adapter
from kit.core.config import StrictModel
from kit.core.dataset import dataset_fingerprint, derived_values, load_dataset_dict
from kit.core.files import atomic_write_json, atomic_write_text, fingerprint
from kit.core.run_dir import RunDir
from kit.core.stage import StageManifest, StagePlan, config_dict, read_stage_manifest, run_stage, write_stage_manifest
from kit.distill.generate import PROBES
from kit.distill.sample_store import read_jsonl
from kit.evaluate.config import EvaluateConfig
from kit.evaluate.stage import primary_metric, score
from kit.evaluate.worker import generate_batched
from kit.models.base_model import resolve_base
from kit.models.gguf_tokenizer import read_gguf_metadata
from runtime.backends.base import default_threads
from runtime.backends.batch_engine import BatchEngine, BatchingUnsupported
from runtime.answer_rules import AnswerRules
from trainers.model import load_tokenizer

STAGE = "probe"
FAILURES = "failures.jsonl"
SUMMARY = "probe.json"
ROUNDS_JSON = "rounds.json"
ROUNDS_PNG = "rounds.png"
console = Console(stderr=True)


class ProbeConfig(StrictModel):
    """What the probe stage reads: the scoring setup (task, output, checks, student and its system prompt), which
    round this is, and the probe folders of the earlier rounds (for the per-round figure of the last one)."""

    evaluate: EvaluateConfig
    number: int = Field(1, ge=1)
    of: int = Field(1, ge=1)
    earlier: list[Path] = Field(default_factory=list)


class ProbeStage:
    name = STAGE

    def folder(self, run_dir: RunDir) -> Path:
        return run_dir.probe

    def plan(self, config: ProbeConfig, run_dir: RunDir) -> StagePlan:
        trained = read_stage_manifest(run_dir.train)
        inputs = {"dataset": dataset_fingerprint(run_dir.dataset), "adapter": trained.key if trained else ""}
        if (run_dir.data / PROBES).is_file():
            inputs["probes"] = fingerprint(run_dir.data / PROBES)
        evaluate = config.evaluate
        record = {"number": config.number, "of": config.of, "student": evaluate.student,
                  "system_prompt": evaluate.student_system_prompt, "max_new_tokens": evaluate.eval.max_new_tokens,
                  "output": config_dict(evaluate.output), "earlier": [str(p) for p in config.earlier]}
        return StagePlan(record, inputs)

    def make(self, config: ProbeConfig, run_dir: RunDir, plan: StagePlan, threads: int | None = None) -> StageManifest:
        return _probe(config, run_dir, plan, threads)


PROBE = ProbeStage()


def run(config: ProbeConfig, run_dir: RunDir, *, force: bool = False) -> StageManifest:
    return run_stage(PROBE, config, run_dir, force=force)


def _probe(config: ProbeConfig, run_dir: RunDir, plan: StagePlan, threads: int | None) -> StageManifest:
    started = time.time()
    probes = read_jsonl(run_dir.data / PROBES)
    validation = [{"input": row["input"], "output": row["output"]}
                  for row in load_dataset_dict(run_dir.dataset)["validation"]]
    cases = [{"input": _text(p["input"]), "output": p["output"]} for p in probes] + validation
    console.print(f"[bold]probe[/bold] round {config.number}/{config.of}: the student answers {len(probes)} probes "
                  f"and {len(validation)} validation cases ...")
    run_dir.probe.mkdir(parents=True, exist_ok=True)
    derived = derived_values(run_dir.dataset)
    finish = AnswerRules.of(derived).finish
    texts = [finish(text) for text in student_answers(
        config.evaluate, run_dir.adapter, [c["input"] for c in cases], run_dir.probe, threads, derived)]
    marks = [score(config.evaluate, [case], [text]) for case, text in zip(cases, texts)]
    metric = primary_metric(marks[0]) if marks else "exact_match"
    failures = [{"id": p["id"], "input": p["input"], "expected": p["output"], "got": text}
                for p, text, mark in zip(probes, texts, marks) if mark.get(metric, 0.0) < 1.0]
    on_validation = marks[len(probes):]
    summary = {"round": config.number, "of": config.of, "metric": metric, "probed": len(probes),
               "failed": len(failures), "validation_cases": len(on_validation),
               "validation_score": round(sum(m.get(metric, 0.0) for m in on_validation) / len(on_validation), 4)
               if on_validation else None, "seconds": round(time.time() - started, 1)}
    folder = run_dir.probe
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / FAILURES, "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in failures))
    atomic_write_json(folder / SUMMARY, summary)
    outputs = {"failures": FAILURES, "summary": SUMMARY}
    if config.number == config.of and config.of > 1:
        per_round = [json.loads((Path(p) / SUMMARY).read_text()) for p in config.earlier if (Path(p) / SUMMARY).is_file()]
        per_round.append(summary)
        atomic_write_json(folder / ROUNDS_JSON, per_round)
        plot_rounds(per_round, folder / ROUNDS_PNG)
        outputs |= {"rounds": ROUNDS_JSON, "plot": ROUNDS_PNG}
    manifest = plan.manifest(STAGE, outputs=outputs, figures=summary, started=started)
    write_stage_manifest(folder, manifest)
    return manifest


def student_answers(config: EvaluateConfig, adapter: Path, inputs: list[str], workdir: Path,
                    threads: int | None = None, derived: dict[str, Any] | None = None) -> list[str]:
    """Greedy answers of base + adapter to each input, with the student's system prompt. A student that ships as a
    GGUF answers as it will ship: merged, converted to F16 with llama.cpp's converter and decoded in batches by
    llama.cpp with the output schema's grammar (an unconstrained answer could fail where the shipped one cannot;
    the `derived` values offered in the student's own form, left for the caller to turn back); any other student answers
    through transformers."""
    if not inputs:
        return []
    base = resolve_base(config.student)
    system = [{"role": "system", "content": config.student_system_prompt}] if config.student_system_prompt else []
    conversations = [system + [{"role": "user", "content": text}] for text in inputs]
    if base.source_gguf is not None:
        answers = _gguf_answers(config, base, adapter, conversations, workdir, threads, derived)
        if answers is not None:
            return answers
    return _hf_answers(config, base, adapter, conversations, threads)


def _gguf_answers(config: EvaluateConfig, base, adapter: Path, conversations: list, workdir: Path,
                  threads: int | None, derived: dict[str, Any] | None = None) -> list[str] | None:
    """None when the GGUF has no chat template llama.cpp can batch with."""
    merged, gguf = workdir / "merged", workdir / "student-F16.gguf"
    try:
        merge_adapter(base, adapter, merged)
        pre_tokenizer = read_gguf_metadata(base.source_gguf, ("tokenizer.ggml.pre",)).get("tokenizer.ggml.pre")
        convert_to_gguf(merged, gguf, "F16", pre_tokenizer, base.source_gguf)
    finally:
        shutil.rmtree(merged, ignore_errors=True)
    try:
        engine = BatchEngine(str(gguf), parallel=config.eval.batch, n_ctx=2048, n_threads=threads or default_threads())
    except BatchingUnsupported:
        gguf.unlink(missing_ok=True)
        return None
    try:
        params = {"temperature": 0.0, "max_tokens": config.eval.max_new_tokens}
        schema = config.output.resolved_schema() if config.output.format == "json" else None
        rules = AnswerRules.of({**(derived or {}), "copy_fields": config.critic.copied_fields})
        futures = [engine.submit(messages, rules.schema(schema, messages[-1]["content"]), params)
                   for messages in conversations]
        return [future.result().text for future in futures]
    finally:
        engine.close()
        gguf.unlink(missing_ok=True)


def _hf_answers(config: EvaluateConfig, base, adapter: Path, conversations: list, threads: int | None) -> list[str]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if threads:
        torch.set_num_threads(threads)
    tokenizer = load_tokenizer(base.hf_path)
    model = AutoModelForCausalLM.from_pretrained(base.hf_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()
    rows = generate_batched(model, tokenizer, conversations, config.eval.max_new_tokens, config.eval.batch)
    return [row["text"] for row in rows]


def plot_rounds(per_round: list[dict[str, Any]], out: Path) -> Path:
    """Validation score and probe failure share per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in per_round]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(rounds, [100 * (r["validation_score"] or 0) for r in per_round], marker="o",
            label=f"validation {per_round[-1]['metric']}")
    probed = [r for r in per_round if r["probed"]]
    if probed:
        ax.plot([r["round"] for r in probed], [100 * r["failed"] / r["probed"] for r in probed], marker="s",
                linestyle="--", label="probes failed")
    ax.set_xlabel("round")
    ax.set_ylabel("%")
    ax.set_xticks(rounds)
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title("failure-driven rounds")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
