"""The eval stage scores real predictions: SQL by execution, JSON by fields, runtime artifacts in a child process."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from kit.core.run_dir import RunDir
from kit.evaluate import stage as evaluate
from kit.recipe.loader import load_recipe
from kit.recipe.stages import evaluate_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_sql_execution_accuracy_ignores_row_order_unless_the_gold_sorts():
    recipe = load_recipe(EXAMPLES / "text-to-sql" / "recipe.yaml")
    cases = [{"input": "q1", "output": "SELECT name FROM categories"},
             {"input": "q2", "output": "SELECT name FROM categories ORDER BY name"},
             {"input": "q3", "output": "SELECT COUNT(*) FROM orders"}]
    predictions = ["SELECT name FROM categories ORDER BY name DESC",  # same set, order irrelevant
                   "```sql\nSELECT name FROM categories ORDER BY name DESC\n```",  # wrong order where it matters
                   "SELECT COUNT(*) FROM nowhere"]  # does not execute
    assert evaluate.score(evaluate_config(recipe), cases, predictions)["execution_accuracy"] == pytest.approx(1 / 3)


def test_tool_calling_scores_validity_schema_and_each_field():
    recipe = load_recipe(EXAMPLES / "tool-calling" / "recipe.yaml")
    gold = {"tool": "set_volume", "arguments": {"level": 30}}
    cases = [{"input": "volume 30", "output": gold}] * 3
    predictions = [json.dumps(gold), '{"tool": "set_volume", "arguments": {"level": 3}}', "I can't do that"]
    figures = evaluate.score(evaluate_config(recipe), cases, predictions)
    assert figures["json_valid"] == pytest.approx(2 / 3)
    assert figures["json_schema_valid"] == pytest.approx(2 / 3)
    assert figures["field:tool"] == pytest.approx(2 / 3)
    assert figures["field:arguments"] == pytest.approx(1 / 3)
    assert figures["exact_match"] == pytest.approx(1 / 3)


@pytest.mark.slow
def test_eval_stage_runs_a_gguf_in_a_child_process_and_writes_the_report(tmp_path, store_gguf):
    (tmp_path / "eval.jsonl").write_text('{"input": "What is the capital of France?", "output": "Paris"}\n'
                                         '{"input": "What is the capital of Italy?", "output": "Rome"}\n')
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(textwrap.dedent("""\
        task: {name: capitals, description: Answer with the capital city of the country asked about.}
        seeds: [{input: "What is the capital of Spain?", output: Madrid}]
        eval: {file: eval.jsonl, metrics: [contains, exact_match], max_new_tokens: 16}
        """))
    recipe = load_recipe(recipe_path)
    run = RunDir(tmp_path / "run")
    manifest = evaluate.run(evaluate_config(recipe, targets=[evaluate.Target(name="student-q4", kind="gguf", path=str(store_gguf))]), run, threads=2)
    report = json.loads((run.eval / "report.json").read_text())
    target = report["targets"]["student-q4"]
    assert target["metrics"]["contains"] >= 0.5  # the 135M instruct model knows Paris
    assert target["runtime"]["decode_tokens_per_s"] > 0 and target["runtime"]["peak_rss_mb"] > 50
    assert (run.eval / "report.png").stat().st_size > 1000
    assert "student-q4" in (run.eval / "report.md").read_text()
    assert manifest.figures["student-q4"] == target["metrics"]
    # the same target again: predictions reused from the cache, the report unchanged; a rewritten model is re-scored
    cached = run.eval / "target_cache" / "student-q4.json"
    assert cached.is_file()
    stamp = cached.stat().st_mtime_ns
    evaluate.run(evaluate_config(recipe, targets=[evaluate.Target(name="student-q4", kind="gguf", path=str(store_gguf))]), run, threads=2, force=True)
    assert cached.stat().st_mtime_ns == stamp
    assert json.loads((run.eval / "report.json").read_text())["targets"]["student-q4"] == target


def _capitals_recipe(tmp_path, eval_extra: str):
    (tmp_path / "eval.jsonl").write_text("".join(
        json.dumps({"input": f"What is the capital of {country}?", "output": city}) + "\n"
        for country, city in [("France", "Paris"), ("Italy", "Rome"), ("Japan", "Tokyo")]))
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(f"""\
        task: {{name: capitals, description: Answer with the capital city of the country asked about.}}
        seeds: [{{input: "What is the capital of Spain?", output: Madrid}}]
        eval: {{file: eval.jsonl, metrics: [contains], max_new_tokens: 8{eval_extra}}}
        """))
    return load_recipe(path)


def test_a_gguf_is_timed_one_request_at_a_time_and_scored_in_batches(tmp_path, store_gguf):
    gguf = str(store_gguf)
    target = evaluate.Target(name="student", kind="gguf", path=gguf)
    batched = evaluate.run(evaluate_config(_capitals_recipe(tmp_path, ", latency_cases: 1, batch: 2"), targets=[target]), RunDir(tmp_path / "a"), threads=2)
    single = evaluate.run(evaluate_config(_capitals_recipe(tmp_path, ", latency_cases: 3"), targets=[target]), RunDir(tmp_path / "b"), threads=2)
    report = json.loads((tmp_path / "a" / "eval" / "report.json").read_text())["targets"]["student"]
    runtime = report["runtime"]
    assert runtime["timed_cases"] == 1 and runtime["batched"] and runtime["latency_ms_p50"] > 0
    assert runtime["peak_rss_mb"] > 50 and runtime["decode_tokens_per_s"] > 0
    assert "the first 1 cases one request at a time" in (tmp_path / "a" / "eval" / "report.md").read_text()
    # the same model decoded greedily, in a batch or alone, gives the same capitals
    assert batched.figures["student"] == single.figures["student"] and single.figures["student"]["contains"] >= 2 / 3
    all_single = json.loads((tmp_path / "b" / "eval" / "report.json").read_text())["targets"]["student"]["runtime"]
    assert all_single["timed_cases"] == 3 and not all_single["batched"]


def test_a_transformers_model_is_scored_in_left_padded_batches(tmp_path, tiny_llama):
    target = evaluate.Target(name="tiny", kind="hf", path=str(tiny_llama))
    evaluate.run(evaluate_config(_capitals_recipe(tmp_path, ", latency_cases: 1, batch: 2"), targets=[target]), RunDir(tmp_path / "a"), threads=2)
    evaluate.run(evaluate_config(_capitals_recipe(tmp_path, ", latency_cases: 3"), targets=[target]), RunDir(tmp_path / "b"), threads=2)
    read = lambda name: [json.loads(line)["tiny"] for line in (tmp_path / name / "eval" / "predictions.jsonl").open()]
    # left padding with its attention mask leaves each answer as it is alone (greedy, same weights)
    assert read("a") == read("b") and all(read("a"))


def test_prediction_cache_misses_when_the_model_files_or_prompts_change(tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"weights")
    spec = {"kind": "gguf", "inputs": ["a", "b"], "system_prompt": "s", "threads": 2}
    target = evaluate.Target(name="student", kind="gguf", path=str(model))
    first = evaluate.PredictionCache(tmp_path / "cache", "student", spec, target)
    prediction = {"rows": [], "wall_s": 1.0, "peak_rss_mb": 100.0}
    first.put(prediction)
    assert evaluate.PredictionCache(tmp_path / "cache", "student", spec | {"threads": 1}, target).get() == prediction
    assert evaluate.PredictionCache(tmp_path / "cache", "student", spec | {"system_prompt": "t"}, target).get() is None
    model.write_bytes(b"retrained weights")
    assert evaluate.PredictionCache(tmp_path / "cache", "student", spec, target).get() is None


def test_peak_rss_is_the_workers_own_not_its_parents():
    from runtime.memory import peak_rss_mb

    assert 5 < peak_rss_mb() < 20_000


def test_onnx_variants_scored_are_those_that_ship():
    from kit.evaluate.stage import _scored_onnx
    from kit.recipe.schema import Recipe

    recipe = Recipe.model_validate({"task": {"name": "t", "description": "count the words in a text"}})  # ships int8 by default
    both = {"merged": "merged", "onnx_fp32": "onnx/model.onnx", "onnx_int8": "onnx/model_int8.onnx"}
    assert _scored_onnx(evaluate_config(recipe), "int8", both) and not _scored_onnx(evaluate_config(recipe), "fp32", both)
    assert _scored_onnx(evaluate_config(recipe), "fp32", {"onnx_fp32": "onnx/model.onnx"})  # the only ONNX there is
    shipped = Recipe.model_validate({"task": {"name": "t", "description": "count the words in a text"},
                                     "export": {"onnx": {"ship": ["fp32", "int8"]}}})
    assert _scored_onnx(evaluate_config(shipped), "fp32", both)
