"""`kit build` end to end on a shrunken recipe: every stage for real, then a rerun that skips them all."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest

RECIPE = """\
task:
  name: capital-finder
  description: Give the capital city of the country named in the question, as JSON.
  system_prompt: 'Answer with JSON {"capital": CITY}.'
output:
  format: json
  schema: {type: object, properties: {capital: {type: string}}, required: [capital], additionalProperties: false}
seeds:
  - {input: "What is the capital of France?", output: {capital: Paris}}
  - {input: "Capital of Japan?", output: {capital: Tokyo}}
  - {input: "Which city is the capital of Italy?", output: {capital: Rome}}
teacher: {backend: llama_cpp, model: smollm2-135m-instruct, max_tokens: 96, n_ctx: 2048, temperature: 0.9}
critic:
  verifiers: [{type: json_schema}, {type: dedup, threshold: 0.9}, {type: decontaminate}]
data: {target_samples: 12, validation_fraction: 0.25, topics: [Europe, Asia, Americas], evolve_fraction: 0.3}
student: {model: smollm2-135m-instruct}
train: {max_steps: 4, batch_size: 4, max_seq_len: 256, checkpoint_every: 2, threads: 2}
export:
  gguf_types: [F16, Q8_0]
  ship: [Q8_0]
  onnx: {enabled: true, quantize: [int8], ship: [int8]}
  verify_rows: 2
  generation: {max_tokens: 24}
eval: {file: eval.jsonl, max_new_tokens: 24}
"""
EVAL = [("What is the capital of Germany?", "Berlin"), ("Capital of Spain?", "Madrid"),
        ("Which city is the capital of Canada?", "Ottawa")]


def first_build(tmp_path, recipe: str, *options: str) -> tuple[list[str], Path, subprocess.CompletedProcess]:
    """Write the recipe and the eval set, run `kit build` once (it must succeed); the command and the run folder."""
    (tmp_path / "recipe.yaml").write_text(recipe)
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"input": q, "output": {"capital": a}}) + "\n"
                                                 for q, a in EVAL))
    command = [sys.executable, "-m", "kit", "build", str(tmp_path / "recipe.yaml"), "--runs", str(tmp_path / "runs"),
               *options]
    first = subprocess.run(command, capture_output=True, text=True, timeout=1500)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return command, tmp_path / "runs" / "capital-finder", first


@pytest.mark.slow
def test_build_runs_every_stage_then_resumes_by_skipping(tmp_path):
    command, run, first = first_build(tmp_path, textwrap.dedent(RECIPE), "--threads", "2")
    for stage in ("data", "train", "export", "eval"):
        assert (run / stage / "manifest.json").is_file(), stage
    report = json.loads((run / "eval" / "report.json").read_text())
    assert {"base", "teacher", "merged", "gguf-Q8_0", "onnx-int8"} <= set(report["targets"])
    manifest = json.loads((run / "bundle" / "manifest.json").read_text())
    assert manifest["eval"]["cases"] == 3 and "gguf-Q8_0" in manifest["eval"]["targets"]
    assert "## Evaluation" in (run / "bundle" / "README.md").read_text()
    # the build ends by serving the bundle for real and asking it the first held-out question
    assert "kit serve answered 'What is the capital of Germany?'" in " ".join(first.stdout.split())
    from runtime import Expert, GenerationStats

    question = [{"role": "user", "content": "What is the capital of Peru?"}]
    stats = GenerationStats()
    with Expert.load(run / "bundle") as expert:  # hashes, including the refreshed model card, still match
        schema = expert.manifest.output_schema
        text = "".join(expert.generate(expert.render(question), expert.params(json_schema=schema), stats))
    # the grammar holds every token: an answer that ends is the schema's; a student trained for a few steps may
    # instead run out of tokens inside its string, and then the answer is cut at export.generation.max_tokens
    assert text.startswith("{") and "\n" not in text
    if stats.finish_reason == "stop":
        jsonschema.validate(json.loads(text), schema)
    else:
        assert (stats.finish_reason, stats.completion_tokens) == ("length", 24)
    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "export is up to date" in second.stdout + second.stderr
    assert "eval is up to date" in second.stdout + second.stderr


@pytest.mark.slow
def test_failure_driven_rounds_probe_the_student_and_write_inputs_like_its_failures(tmp_path):
    """Two rounds for real: round 1 holds out a probe pool, its student answers it, and round 2's teacher writes
    inputs like the failed probes; round 2 trains on everything from round 1's adapter; a rerun skips it all."""
    recipe = textwrap.dedent(RECIPE).replace(
        "data: {target_samples: 12,", "data: {target_samples: 16, rounds: 2, probe_fraction: 0.4,")
    command, run, _ = first_build(tmp_path, recipe, "--until", "probe")
    round1 = run / "rounds" / "1"
    probes = [json.loads(line) for line in (round1 / "data" / "probes.jsonl").read_text().splitlines()]
    samples1 = [json.loads(line) for line in (round1 / "data" / "samples.jsonl").read_text().splitlines()]
    assert probes and {p["id"] for p in probes} <= {s["id"] for s in samples1}
    probe1 = json.loads((round1 / "probe" / "probe.json").read_text())
    assert probe1["probed"] == len(probes) and probe1["round"] == 1
    failures = [json.loads(line) for line in (round1 / "probe" / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == probe1["failed"]
    from datasets import load_from_disk

    round1_train = {row["id"] for row in load_from_disk(str(round1 / "data" / "dataset"))["train"]}
    assert not round1_train & {p["id"] for p in probes}  # probes are held out of the round that probes with them
    stats2 = json.loads((run / "data" / "stats.json").read_text())["round"]
    assert stats2 | {"probed": probe1["probed"]} == stats2 and stats2["number"] == 2
    assert stats2["earlier_samples"] == len(samples1) and stats2["failed"] == probe1["failed"]
    samples2 = [json.loads(line) for line in (run / "data" / "samples.jsonl").read_text().splitlines()]
    if failures:  # round 2 asks for inputs like the failed ones
        assert stats2["inputs_like_failures"] > 0
        assert any(s["origin"].startswith("like failed probe") for s in samples2)
    final = load_from_disk(str(run / "data" / "dataset"))
    ids = {row["id"] for split in final.values() for row in split}
    assert {s["id"] for s in samples1 + samples2} <= ids  # every round's samples, round 1's probes included
    train2 = json.loads((run / "train" / "manifest.json").read_text())
    assert "init_adapter" in train2["inputs"]  # round 2 starts from round 1's adapter
    rounds = json.loads((run / "probe" / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2] and (run / "probe" / "rounds.png").is_file()
    assert not (run / "export").exists()  # --until probe stops after the last round's probe
    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (second.stdout + second.stderr).count("is up to date") == 6
