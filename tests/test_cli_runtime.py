"""`kit run` prints schema-valid JSON for a task expert (one shot and JSON-lines batches); `kit chat` streams."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest

pytestmark = pytest.mark.slow


def kit(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kit", *args], input=stdin, capture_output=True, text=True, timeout=300)


def test_kit_run_prints_schema_valid_json(task_bundle, person_schema):
    result = kit("run", str(task_bundle), "Maria Lopez is 34 years old.", "--n-ctx", "1024")
    assert result.returncode == 0, result.stderr
    jsonschema.validate(json.loads(result.stdout), person_schema)


def test_kit_run_answers_a_json_lines_batch_line_by_line(task_bundle, person_schema):
    batch = '"Tom is 40."\n{"text": "Ann, aged 3, likes cats."}\n'
    result = kit("run", str(task_bundle), "--n-ctx", "1024", stdin=batch)
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == 2
    for answer in answers:
        jsonschema.validate(answer, person_schema)


def test_kit_run_parallel_answers_a_batch_together_in_input_order(task_bundle, person_schema):
    people = ["Tom is 40.", "Ann is 3.", "Raj is 57.", "Eve is 21.", "Bo is 66."]
    batch = "".join(f'"{p}"\n' for p in people)
    one = kit("run", str(task_bundle), "--n-ctx", "1024", stdin=batch)
    together = kit("run", str(task_bundle), "--n-ctx", "1024", "--parallel", "3", stdin=batch)
    assert together.returncode == 0, together.stderr
    answers = [json.loads(line) for line in together.stdout.splitlines()]
    assert len(answers) == len(people)
    for answer in answers:
        jsonschema.validate(answer, person_schema)
    # in order: each line's answer names that line's person, as the one-at-a-time run does
    assert [a.get("age") for a in answers] == [json.loads(l).get("age") for l in one.stdout.splitlines()]


def test_kit_run_on_a_missing_bundle_says_what_to_pass(tmp_path):
    result = kit("run", str(tmp_path / "nope"), "x")
    assert result.returncode == 1 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_kit_chat_streams_and_handles_reset_and_system(store_gguf):
    script = "/system Answer in one short sentence.\nHello!\n/reset\nName a fruit.\n/exit\n"
    result = kit("chat", str(store_gguf), "--max-tokens", "12", "--n-ctx", "1024", stdin=script)
    assert result.returncode == 0, result.stderr
    assert "(system prompt set; conversation cleared)" in result.stdout
    assert "(conversation cleared)" in result.stdout
    # Each prompt "> " is followed by the streamed reply or by a "(...)" notice for a command.
    replies = [line[2:] for line in result.stdout.splitlines() if line.startswith("> ") and line[2:].strip()]
    assert len([r for r in replies if not r.startswith("(")]) == 2, result.stdout
