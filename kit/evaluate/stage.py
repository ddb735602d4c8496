"""The eval stage: the recipe's metrics for base student, teacher, trained student and every export.

Each target runs in its own process (kit.evaluate.worker) so latency, decode speed and peak memory are its own.
Writes report.json, report.md and report.png into the run's eval folder.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from kit.core.dataset import derived_values
from kit.core.errors import UserError
from kit.core.files import atomic_write_json, atomic_write_text, fingerprint
from kit.core.run_dir import RunDir
from kit.core.stage import StageManifest, StagePlan, config_dict, read_stage_manifest, run_stage, write_stage_manifest
from kit.distill.config import PythonVerifier, SqlVerifier
from kit.distill.critic.sql import SqlError, run_query
from kit.distill.sandbox import run_python
from kit.evaluate import metrics
from kit.evaluate.config import EvaluateConfig, Target
from kit.evaluate.report import plot_report, report_markdown, report_table
from kit.models.reference import resolve_model

STAGE = "eval"
console = Console()


def eval_cases(config: EvaluateConfig) -> list[dict[str, Any]]:
    if config.eval.file is None:
        raise UserError("the recipe has no eval set: add `eval.file:` (JSONL of input/output written by hand)")
    cases = []
    for number, line in enumerate(config.eval.file.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            if "input" not in row or "output" not in row:
                raise UserError(f"{config.eval.file}:{number}: each line needs `input` and `output`")
            if not isinstance(row["input"], str):
                row["input"] = json.dumps(row["input"], ensure_ascii=False)
            cases.append(row)
    return cases[: config.eval.limit] if config.eval.limit else cases


def default_targets(config: EvaluateConfig, run: RunDir) -> list[Target]:
    """Base student and teacher, then what the export stage made (merged HF, GGUF quants, ONNX variants)."""
    student = resolve_model(config.student)
    # A student that ships as a GGUF is scored as one (as apps would run it, and far faster than eager PyTorch).
    base = Target(name="base", kind="gguf", path=str(student.gguf())) if student.kind in ("store", "gguf") else \
        Target(name="base", kind="hf", path=student.hf())
    targets = [base]
    if config.include_teacher:
        targets.append(Target(name="teacher", kind="teacher"))
    exported = read_stage_manifest(run.export)
    learned = derived_values(run.dataset)  # answers as the student learned to write them
    trained = {"derived": {k: v for k, v in learned.items() if v}}
    if exported is not None:
        for key, rel in exported.outputs.items():
            if key == "merged" and config.eval.merged:
                targets.append(Target(name="merged", kind="hf", path=str(run.export / rel), **trained))
            elif key.startswith("gguf_"):
                targets.append(Target(name=f"gguf-{key[5:]}", kind="gguf", path=str(run.export / rel), **trained))
            elif key.startswith("onnx_") and _scored_onnx(config, key[5:], exported.outputs):
                targets.append(Target(name=f"onnx-{key[5:]}", kind="onnx", path=str(run.export / rel), **trained))
            elif key.startswith("genai_"):  # onnxruntime-genai, JSON through its guidance
                targets.append(Target(name=f"onnx-genai-{key[6:]}", kind="onnx-genai", path=str(run.export / rel),
                                      **trained))
    return targets


def _scored_onnx(config: EvaluateConfig, variant: str, outputs: dict[str, str]) -> bool:
    """The ONNX variants that ship are scored. An fp32 graph kept only as the source of the quantized ones
    is left out (export already checked it against the merged model); it is scored when nothing else is."""
    made = [key[5:] for key in outputs if key.startswith("onnx_")]
    return variant in config.onnx_ship or made == [variant]


def predict(config: EvaluateConfig, target: Target, cases: list[dict[str, Any]], threads: int | None,
            cache_dir: Path | None = None) -> dict[str, Any]:
    """Run one target over the eval inputs in a child process; its predictions and resource figures."""
    schema = config.output.resolved_schema() if config.output.format == "json" else None
    fewshot = []
    # the base student and the teacher get the task's prompt; what was trained gets the student's own
    system_prompt = config.task.effective_system_prompt if target.name in ("base", "teacher") else config.student_system_prompt
    if target.kind == "teacher":
        for seed in config.seeds:
            answer = seed.output if isinstance(seed.output, str) else json.dumps(seed.output, ensure_ascii=False)
            question = seed.input if isinstance(seed.input, str) else json.dumps(seed.input, ensure_ascii=False)
            fewshot += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    spec = {"kind": target.kind, "path": target.path, "backend": target.kind, "inputs": [c["input"] for c in cases],
            "system_prompt": system_prompt, "fewshot": fewshot, "schema": schema,
            "copy_fields": config.critic.copied_fields,
            "max_new_tokens": config.eval.max_new_tokens, "threads": threads,
            "latency_cases": config.eval.latency_cases, "batch": config.eval.batch,
            "teacher": config.teacher.model_dump(mode="json") if target.kind == "teacher" else None}
    spec |= target.derived  # only when there are some: the other targets' cached predictions keep their keys
    cache = PredictionCache(cache_dir, target.name, spec, target) if cache_dir is not None else None
    if cache is not None and (hit := cache.get()) is not None:
        console.print(f"  {target.name}: same model and prompts as last time, predictions reused")
        return hit
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        result = subprocess.run([sys.executable, "-m", "kit.evaluate.worker", str(spec_path), str(out_path)],
                                capture_output=True, text=True)
        if result.returncode != 0 or not out_path.exists():
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise UserError(f"evaluating {target.name} failed: {' | '.join(tail)}")
        prediction = json.loads(out_path.read_text())
    if cache is not None:
        cache.put(prediction)
    return prediction


class PredictionCache:
    """One target's predictions, reused while the model files, the prompts and the runner are unchanged (a
    retrained student re-scores what changed; base student and teacher are not asked again)."""

    VERSION = 3  # bump when the eval worker or the runtime changes what a model answers

    def __init__(self, folder: Path, name: str, spec: dict[str, Any], target: "Target"):
        self.path = folder / f"{name}.json"
        model = {"files": _files_fingerprint(target.path)} if target.path else {}
        if target.kind == "teacher":
            try:
                model["teacher"] = _files_fingerprint(str(resolve_model(spec["teacher"]["model"]).gguf()))
            except Exception:  # a remote or HF teacher: its name and settings are all there is
                model["teacher"] = spec["teacher"]
        keyed = {k: v for k, v in spec.items() if k != "threads"} | {"model": model, "version": self.VERSION}
        self.key = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()

    def get(self) -> dict[str, Any] | None:
        try:
            stored = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return stored["prediction"] if stored.get("key") == self.key else None

    def put(self, prediction: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"key": self.key, "prediction": prediction}))


def _files_fingerprint(path: str) -> list[tuple[str, int, int]]:
    """Name, size and mtime of every file of a model (a file or a folder): cheap, and any rewrite changes it."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return [(p.name if p == root else p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in files]


def score(config: EvaluateConfig, cases: list[dict[str, Any]], texts: list[str]) -> dict[str, float]:
    """Mean of each of the recipe's metrics over the eval set (json_fields expands to one figure per key)."""
    fmt = config.output.format
    names = metrics.default_metrics(config)
    schema = config.output.resolved_schema()
    valid = metrics.schema_validator(schema) if schema is not None else None
    database = next((v for v in config.critic.verifiers if isinstance(v, SqlVerifier)), None)
    rows = []
    for case, text in zip(cases, texts):
        gold, row = case["output"], {}
        for name in names:
            if name == "json_valid":
                row[name] = metrics.json_valid(text, gold)
            elif name == "json_schema_valid" and valid is not None:
                row[name] = valid(text)
            elif name == "json_fields":
                row.update({f"field:{k}": v for k, v in metrics.json_fields(text, gold).items()})
            elif name == "exact_match":
                row[name] = metrics.exact_match(text, gold, fmt)
            elif name == "contains":
                row[name] = metrics.contains(text, gold)
            elif name == "execution_accuracy":
                if database is None:
                    raise UserError("execution_accuracy needs a database: add a `sql` verifier to critic.verifiers")
                row[name] = execution_match(database, metrics.extract_code(text), str(gold))
            elif name == "pass_rate":
                row[name] = python_pass(config, metrics.extract_code(text), case)
        rows.append(row)
    return metrics.mean_scores(rows)


def execution_match(database: SqlVerifier, predicted: str, gold: str) -> float:
    """1 when both queries give the same result set (row order matters only if the gold query sorts)."""
    ordered = "order by" in gold.lower()
    try:
        expected = run_query(database.database, gold, database.timeout_s, ordered=ordered)
    except SqlError as err:
        raise UserError(f"a gold query of the eval set fails ({err}): {gold}") from None
    try:
        return float(run_query(database.database, predicted, database.timeout_s, ordered=ordered) == expected)
    except SqlError:
        return 0.0


def python_pass(config: EvaluateConfig, code: str, case: dict[str, Any]) -> float:
    verifier = next((v for v in config.critic.verifiers if isinstance(v, PythonVerifier)), None)
    tests = case.get("tests") or (verifier.tests if verifier else None)
    if verifier and verifier.tests_file and not tests:
        tests = verifier.tests_file.read_text()
    if not tests:
        raise UserError("pass_rate needs tests: give each eval case `tests` or the python verifier `tests:`")
    result = run_python(code + "\n\n" + tests, timeout_s=verifier.timeout_s if verifier else 10.0)
    return float(result.ok)


def primary_metric(figures: dict[str, float]) -> str:
    for name in ("exact_match", "execution_accuracy", "pass_rate"):
        if name in figures:
            return name
    return next(iter(figures))


def summarize(prediction: dict[str, Any]) -> dict[str, float | None]:
    """Latency and decode speed of one request at a time (the `timed` rows when the scores came from batches);
    a target only run in parallel batches (the teacher) has no single-request latency, and its speed is the
    batch's throughput."""
    timed = prediction.get("timed")
    rows = timed if timed is not None else prediction["rows"]
    tokens = sum(r["completion_tokens"] for r in rows)
    parallel = prediction.get("parallel", 1)
    seconds = prediction["wall_s"] if parallel > 1 else sum(r["seconds"] for r in rows)
    firsts = [r["first_token_s"] for r in rows if r["first_token_s"] is not None]
    summary = {"latency_ms_p50": 1000 * statistics.median(r["seconds"] for r in rows) if parallel == 1 else None,
               "decode_tokens_per_s": tokens / seconds if seconds else 0.0,
               "first_token_ms_p50": 1000 * statistics.median(firsts) if firsts else None,
               "peak_rss_mb": prediction["peak_rss_mb"], "wall_s": prediction["wall_s"], "parallel": parallel}
    if timed is not None:
        summary |= {"timed_cases": len(timed), "batched": len(timed) < len(prediction["rows"]),
                    "timed_answers_repeated": prediction.get("agree", len(timed))}
    return summary


def stage_inputs(config: EvaluateConfig, run: RunDir) -> dict[str, str]:
    inputs = {"eval_set": fingerprint(config.eval.file)}
    exported = read_stage_manifest(run.export)
    if exported is not None:
        inputs["export"] = exported.key
    return inputs


def stage_config(config: EvaluateConfig, targets: list[Target]) -> dict[str, Any]:
    return {"eval": config_dict(config.eval), "targets": [t.name for t in targets],
            "teacher": config_dict(config.teacher), "student": config.student}


class EvaluateStage:
    """The eval stage under the one stage contract (kit.core.stage): writes run_dir.eval."""

    name = STAGE

    def folder(self, run_dir: RunDir) -> Path:
        return run_dir.eval

    def plan(self, config: EvaluateConfig, run_dir: RunDir) -> StagePlan:
        cases = eval_cases(config)  # a missing or malformed eval set is reported before anything runs
        targets = config.targets if config.targets is not None else default_targets(config, run_dir)
        return StagePlan(stage_config(config, targets), stage_inputs(config, run_dir),
                         {"cases": cases, "targets": targets})

    def make(self, config: EvaluateConfig, run_dir: RunDir, plan: StagePlan, threads: int | None = None) -> StageManifest:
        return _evaluate(config, run_dir, plan, threads)


EVALUATE = EvaluateStage()


def run(config: EvaluateConfig, run_dir: RunDir, *, threads: int | None = None, force: bool = False) -> StageManifest:
    """Score every target on the eval set and write the report; skipped when the eval set, the export and the
    targets are what the last report scored. `threads`: CPU threads per target."""
    return run_stage(EVALUATE, config, run_dir, force=force, threads=threads)


def _evaluate(config: EvaluateConfig, run: RunDir, plan: StagePlan, threads: int | None) -> StageManifest:
    started = time.time()
    cases, targets = plan.context["cases"], plan.context["targets"]
    run.eval.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"task": config.task.name, "cases": len(cases), "targets": {}}
    samples: dict[str, list[str]] = {}
    for target in targets:
        console.print(f"[bold]eval[/bold] {target.name} ({target.kind}) on {len(cases)} cases ...")
        prediction = predict(config, target, cases, threads, cache_dir=run.eval / "target_cache")
        texts = [r["text"] for r in prediction["rows"]]
        samples[target.name] = texts
        report["targets"][target.name] = {"kind": target.kind, "metrics": score(config, cases, texts),
                                          "runtime": summarize(prediction)}
    report["primary_metric"] = primary_metric(next(iter(report["targets"].values()))["metrics"]) if targets else None
    if (rounds := run.probe / "rounds.json").is_file():  # the validation score of each failure-driven round
        report["rounds"] = json.loads(rounds.read_text())
    atomic_write_json(run.eval / "report.json", report, ensure_ascii=True)
    atomic_write_text(run.eval / "predictions.jsonl", "".join(
        json.dumps({"input": c["input"], "gold": c["output"], **{t: samples[t][i] for t in samples}}, ensure_ascii=False)
        + "\n" for i, c in enumerate(cases)))
    atomic_write_text(run.eval / "report.md", report_markdown(report))
    plot_report(report, run.eval / "report.png")
    console.print(report_table(report))
    manifest = plan.manifest(STAGE, outputs={"report": "report.json", "markdown": "report.md", "plot": "report.png",
                                             "predictions": "predictions.jsonl"},
                             figures={name: t["metrics"] for name, t in report["targets"].items()}, started=started)
    write_stage_manifest(run.eval, manifest)
    return manifest
