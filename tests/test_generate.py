"""The generate stage end to end against a local OpenAI-compatible server that misbehaves on purpose
(429, 500, hangs, malformed JSON), plus resume after kill -9 and the user-facing errors."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kit.core.errors import UserError
from kit.core.run_dir import RunDir
from kit.distill.generate import run
from kit.recipe.loader import load_recipe
from kit.recipe.stages import generate_config

REPO = Path(__file__).resolve().parents[1]
VOCAB = [a + b + c for a in "bcdfgklmnprstvz" for b in "aeiou" for c in "lmnrst"]


class FakeTeacher:
    """A tiny OpenAI-compatible chat server: deterministic replies (by the request's seed), with a fault
    plan keyed by the number of the /chat/completions request (1-based)."""

    def __init__(self, faults: dict[int, str] | None = None, delay_s: float = 0.0, hang_s: float = 3.0,
                 unit_from_input: bool = False, minutes: bool = False, jitter_s: float = 0.0,
                 vocab: list[str] | None = None, echo_ask: bool = False):
        self.echo_ask = echo_ask  # the last input of every list repeats the request's own ask, as small teachers do
        self.faults = dict(faults or {})
        self.unit_from_input = unit_from_input  # answers copy the request's last word as their unit
        self.minutes = minutes  # inputs end "N minutes", answers give N * 60 seconds
        self.delay_s = delay_s
        self.jitter_s = jitter_s  # each reply waits a further random time (unseeded): replies come back in any order
        self.vocab = vocab or VOCAB
        self.hang_s = hang_s
        self.count = 0
        self.bodies: list[str] = []  # sha256 of each request body that was answered
        self.requests: list[dict] = []  # and the body itself
        self.lock = threading.Lock()
        self.closed = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        self.server.shutdown()
        self.server.server_close()

    def reply(self, body: dict) -> dict:
        schema = (body.get("response_format") or {}).get("schema") or \
            (body.get("response_format") or {}).get("json_schema", {}).get("schema", {})
        props = schema.get("properties", {})
        rng = random.Random(body.get("seed", 0))
        def words() -> str:
            return " ".join(rng.choice(self.vocab) for _ in range(8)) + (
                f" {rng.randrange(2, 90)} minutes" if self.minutes else "")

        if "input" in props:
            content = {"input": words()}
        elif "wordings" in props:  # ways to ask for a topic: two words of the topic's own, and one repeated
            topic = body["messages"][-1]["content"].split("to ask about: ", 1)[-1].split(":", 1)[0]
            content = {"wordings": [f"{topic}-{k}" for k in range(props["wordings"]["minItems"] - 1)] + [f"{topic}-0"]}
        elif "inputs" in props:  # a list of inputs, as many as the schema asks
            content = {"inputs": [words() for _ in range(props["inputs"]["minItems"])]}
            if self.echo_ask:
                ask = next(m["content"] for m in body["messages"] if m["role"] == "user").split("\n")[0]
                content["inputs"][-1] = ask.lower().replace("write 4", "write four")
        elif "answer" in props and self.minutes:
            question = body["messages"][-1]["content"]
            minutes = int(question.split()[-2])  # a third of the answers note the minutes again: a repeat
            note = f"{minutes} minutes" if minutes % 3 == 0 else "timer"
            content = {"reasoning": "minutes to seconds", "answer": {"value": minutes * 60, "unit": "s", "note": note}}
        elif "answer" in props:
            question = body["messages"][-1]["content"]
            stable = int(hashlib.sha256(question.encode()).hexdigest()[:6], 16) % 1000
            value = stable if rng.random() < 0.7 else rng.randrange(1000)  # most samples agree with each other
            unit = question.split()[-1] if self.unit_from_input else "km"
            answer = {"value": "not a number" if value % 5 == 0 else value, "unit": unit}
            content = {"reasoning": f"step one, then {value}", "answer": answer}
        else:  # the judge
            answer = body["messages"][-1]["content"].rsplit("Answer:\n", 1)[-1]
            content = {"reason": "checked", "score": 3 if '"value":7' in answer else 8}
        return {"choices": [{"message": {"role": "assistant", "content": json.dumps(content)}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5}}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: bytes, headers: dict | None = None) -> None:
                try:
                    self.send_response(status)
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                self._send(200, b'{"object": "list", "data": [{"id": "fake"}]}')

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with fake.lock:
                    fake.count += 1
                    fault = fake.faults.get(fake.count)
                time.sleep(fake.delay_s + random.uniform(0, fake.jitter_s))
                if fault == "429":
                    return self._send(429, b'{"error": "slow down"}', {"Retry-After": "0"})
                if fault == "500":
                    return self._send(500, b'{"error": "boom"}')
                if fault == "hang":
                    time.sleep(fake.hang_s)
                    return self._send(200, json.dumps(fake.reply(json.loads(raw))).encode())
                if fault == "malformed":
                    return self._send(200, b'{"choices": [{"message": ')
                if fault == "die":  # the server goes away: this request gets no answer, later ones a refusal
                    threading.Thread(target=fake.close, daemon=True).start()
                    self.close_connection = True
                    return None
                with fake.lock:
                    fake.bodies.append(hashlib.sha256(raw).hexdigest())
                    fake.requests.append(json.loads(raw))
                self._send(200, json.dumps(fake.reply(json.loads(raw))).encode())

        return Handler


def write_recipe(folder: Path, url: str, target: int, extra_verifiers: str = "", teacher_extra: str = "",
                 data_extra: str = "") -> Path:
    path = folder / "recipe.yaml"
    path.write_text(textwrap.dedent(f"""\
        task: {{name: fake-task, description: Turn a request into a distance with its unit.}}
        output:
          format: json
          schema: {{type: object, properties: {{value: {{type: number}}, unit: {{type: string}}}}, required: [value, unit]}}
        seeds:
          - {{input: "three miles please", output: {{value: 4.83, unit: km}}, reasoning: "1 mile is 1.609 km"}}
          - {{input: "ten kilometres in miles", output: {{value: 6.2, unit: mi}}}}
        teacher: {{backend: openai, base_url: "{url}", model: fake, concurrency: 3, timeout_s: 1.0,
                   max_retries: 4, max_tokens: 64{teacher_extra}}}
        critic:
          verifiers:
            - {{type: json_schema}}
            - {{type: judge, rubric: "Is the distance plausible and the unit right?", threshold: 6}}
            - {{type: dedup}}{extra_verifiers}
        data: {{target_samples: {target}, topics: [hiking, flights], validation_fraction: 0.2{data_extra}}}
        """))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def fake_teacher():
    servers: list[FakeTeacher] = []

    def start(**kwargs) -> FakeTeacher:
        servers.append(FakeTeacher(**kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_faults_are_retried_and_every_accepted_sample_is_intact(tmp_path, fake_teacher):
    teacher = fake_teacher(faults={2: "429", 4: "500", 6: "hang", 8: "malformed", 9: "429", 10: "500"})
    recipe = load_recipe(write_recipe(tmp_path, teacher.url, target=12))
    run_dir = RunDir(tmp_path / "run")
    manifest = run(generate_config(recipe), run_dir)

    samples = read_jsonl(run_dir.data / "samples.jsonl")
    rejected = read_jsonl(run_dir.data / "rejected.jsonl")
    stats = json.loads((run_dir.data / "stats.json").read_text())
    assert len(samples) == 12 and manifest.figures["target_reached"]
    assert len({s["id"] for s in samples}) == 12
    assert len({s["index"] for s in samples + rejected}) == len(samples) + len(rejected)
    for sample in samples:  # every kept answer passed the schema and the judge
        output = json.loads(sample["output"])
        assert isinstance(output["value"], int) and output["value"] != 7 and output["unit"] == "km"
    assert {r["verifier"] for r in rejected} <= {"json_schema", "judge", "dedup", "parse"}
    assert any(r["verifier"] == "json_schema" for r in rejected)
    usage = stats["teacher"]
    assert usage["retries"] == 6 and usage["failed"] == 0
    assert set(usage["retry_reasons"]) == {"http 429", "http 500", "timeout", "malformed response"}
    assert stats["accepted"] == 12 and stats["attempts"] == 12 + len(rejected)
    assert stats["tokens"]["prompt"] > 0 and stats["samples_per_s"] > 0
    steps = {s["step"]: s for s in stats["steps"]}
    assert steps["json_schema"]["cut"] == sum(r["verifier"] == "json_schema" for r in rejected)

    from datasets import load_from_disk

    dataset = load_from_disk(str(run_dir.dataset))
    # the 12 samples split into train and validation; the two hand-written seeds join train only
    assert dataset["train"].num_rows + dataset["validation"].num_rows == 14 and dataset["validation"].num_rows >= 2
    seed_rows = [r for r in dataset["train"] if r["id"].startswith("seed-")]
    assert [(r["input"], json.loads(r["output"])) for r in seed_rows] == [
        ("three miles please", {"value": 4.83, "unit": "km"}), ("ten kilometres in miles", {"value": 6.2, "unit": "mi"})]
    assert not any(r["id"].startswith("seed-") for r in dataset["validation"]) and stats["seeds_in_training"] == 2
    row = dataset["train"][0]
    assert set(row) == {"id", "input", "output", "reasoning", "messages"}
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert row["messages"][0]["content"] == recipe.task.effective_system_prompt
    assert row["messages"][1]["content"] == row["input"] and row["messages"][2]["content"] == row["output"]
    assert (run_dir.data / "manifest.json").is_file()


def test_a_seed_that_overlaps_the_eval_set_stays_out_of_training(tmp_path, fake_teacher):
    teacher = fake_teacher()
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text(json.dumps({"input": "ten kilometres in miles", "output": {"value": 6.21, "unit": "mi"}}) + "\n")
    recipe_path = write_recipe(tmp_path, teacher.url, target=3, extra_verifiers="\n            - {type: decontaminate}")
    recipe_path.write_text(recipe_path.read_text() + f"eval: {{file: {eval_file}}}\n")
    run_dir = RunDir(tmp_path / "run")
    run(generate_config(load_recipe(recipe_path)), run_dir)

    from datasets import load_from_disk

    train = load_from_disk(str(run_dir.dataset))["train"]
    assert [r["input"] for r in train if r["id"].startswith("seed-")] == ["three miles please"]
    stats = json.loads((run_dir.data / "stats.json").read_text())
    assert stats["seeds_in_training"] == 1 and any("seed 2 left out of training" in n for n in stats["notes"])


def test_value_swaps_add_training_rows_without_asking_the_teacher(tmp_path, fake_teacher):
    teacher = fake_teacher(unit_from_input=True)
    recipe_path = write_recipe(tmp_path, teacher.url, target=8)
    run_dir = RunDir(tmp_path / "run")
    run(generate_config(load_recipe(recipe_path)), run_dir)
    sent = teacher.count

    from datasets import load_from_disk

    assert not any("~swap" in r["id"] for r in load_from_disk(str(run_dir.dataset))["train"])
    recipe_path.write_text(recipe_path.read_text().replace("validation_fraction: 0.2", "validation_fraction: 0.2, "
                                                                                         "value_swaps: 2"))
    run(generate_config(load_recipe(recipe_path)), run_dir)
    assert teacher.count == sent  # the same samples, swapped: nothing new asked
    data = load_from_disk(str(run_dir.dataset))
    swapped = [r for r in data["train"] if "~swap" in r["id"]]
    samples = {s["id"]: s for s in read_jsonl(run_dir.data / "samples.jsonl")}
    donors = {json.loads(r["output"])["unit"] for r in data["train"] if "~swap" not in r["id"]}
    assert swapped and not any("~swap" in r["id"] for r in data["validation"])
    for row in swapped:
        unit = json.loads(row["output"])["unit"]
        source = samples[row["id"].split("~swap")[0]]
        assert row["input"].split()[-1] == unit != json.loads(source["output"])["unit"]
        assert row["input"].split()[:-1] == source["input"].split()[:-1]
        assert unit in donors  # values come from training rows only, never from validation
    stats = json.loads((run_dir.data / "stats.json").read_text())
    assert stats["value_swaps"]["kept"] == len(swapped) and stats["value_swaps"]["per_sample"] == 2


def test_values_derived_by_a_rule_are_trained_in_the_students_form_and_can_be_turned_off(tmp_path, fake_teacher):
    from datasets import load_from_disk

    from runtime.answer_rules import AnswerRules

    teacher = fake_teacher(minutes=True)
    recipe_path = write_recipe(tmp_path, teacher.url, target=8)
    run_dir = RunDir(tmp_path / "run")
    manifest = run(generate_config(load_recipe(recipe_path)), run_dir)
    learned = json.loads((run_dir.dataset / "derived_values.json").read_text())
    fields = learned["derived_numbers"]
    assert fields["value"][0] == 60 and manifest.outputs["derived_values"] == "dataset/derived_values.json"
    stats = json.loads((run_dir.data / "stats.json").read_text())["derived_values"]
    assert {k: stats[k] for k in learned} == learned and stats["left_out"] == len(stats["left_out_examples"])
    # an optional note repeating the request's "N minutes" is dropped from the training answer, kept in the store
    repeats = {s["id"] for s in read_jsonl(run_dir.data / "samples.jsonl") if "minutes" in s["output"]}
    assert repeats and stats["repaired"] == len(repeats) == len(stats["repaired_examples"])
    data = load_from_disk(str(run_dir.dataset))
    generated = [r for split in ("train", "validation") for r in data[split] if not r["id"].startswith("seed-")]
    for row in generated:
        trained = json.loads(row["messages"][-1]["content"])
        minutes = row["input"].split()[-2]
        assert trained["value"] == f"{minutes} * 60" and json.loads(row["output"])["value"] == int(minutes) * 60
        assert trained.get("note", "timer") == "timer" and ("note" in trained) == (row["id"] not in repeats)
        assert json.loads(AnswerRules(derived_numbers=fields).finish(row["messages"][-1]["content"])) == \
            json.loads(row["output"])
    sent = teacher.count
    recipe_path.write_text(recipe_path.read_text().replace("validation_fraction: 0.2",
                                                           "validation_fraction: 0.2, derived_values: false"))
    run(generate_config(load_recipe(recipe_path)), run_dir)
    assert teacher.count == sent  # the same samples, trained as plain numbers: nothing new asked
    assert json.loads((run_dir.dataset / "derived_values.json").read_text()) == \
        {"derived_numbers": {}, "unit_factors": {}, "clock_fields": [], "no_repeat_fields": [], "copy_stop_words": {},
         "named_choices": {}}
    plain = load_from_disk(str(run_dir.dataset))["train"]
    assert all(r["messages"][-1]["content"] == r["output"] for r in plain)


def test_rerun_spends_nothing_and_a_larger_target_reuses_the_cache(tmp_path, fake_teacher):
    teacher = fake_teacher()
    recipe_path = write_recipe(tmp_path, teacher.url, target=5)
    run_dir = RunDir(tmp_path / "run")
    run(generate_config(load_recipe(recipe_path)), run_dir)
    sent = teacher.count
    run(generate_config(load_recipe(recipe_path)), run_dir)
    assert teacher.count == sent  # nothing asked twice
    first = [s["id"] for s in read_jsonl(run_dir.data / "samples.jsonl")]

    config = generate_config(load_recipe(recipe_path))
    config.data.target_samples = 9
    run(config, run_dir)
    samples = read_jsonl(run_dir.data / "samples.jsonl")
    assert len(samples) == 9 and [s["id"] for s in samples[:5]] == first
    assert len(teacher.bodies) == len(set(teacher.bodies))  # no request was ever answered twice


def test_changed_recipe_does_not_mix_with_old_samples(tmp_path, fake_teacher):
    teacher = fake_teacher()
    run_dir = RunDir(tmp_path / "run")
    run(generate_config(load_recipe(write_recipe(tmp_path, teacher.url, target=2))), run_dir)
    changed = write_recipe(tmp_path, teacher.url, target=2, teacher_extra=", temperature: 0.1")
    with pytest.raises(UserError, match="--fresh"):
        run(generate_config(load_recipe(changed)), run_dir)


def test_a_project_moved_elsewhere_keeps_its_samples(tmp_path, fake_teacher):
    import shutil

    teacher = fake_teacher()
    first = tmp_path / "first"
    first.mkdir()
    (first / "eval.jsonl").write_text(json.dumps({"input": "forty miles", "output": {"value": 64.4, "unit": "km"}}) + "\n")
    recipe_path = write_recipe(first, teacher.url, target=3)
    recipe_path.write_text(recipe_path.read_text() + "eval: {file: eval.jsonl}\n")
    run(generate_config(load_recipe(recipe_path)), RunDir(first / "run"))
    asked = len(teacher.requests)
    moved = tmp_path / "moved"
    shutil.copytree(first, moved)
    manifest = run(generate_config(load_recipe(moved / "recipe.yaml")), RunDir(moved / "run"))  # no "changed: eval_file"
    assert manifest.figures["accepted"] == 3 and len(teacher.requests) == asked


def test_self_consistency_keeps_only_majority_answers(tmp_path, fake_teacher):
    teacher = fake_teacher()
    recipe = load_recipe(write_recipe(tmp_path, teacher.url, target=6, data_extra=", answers_per_input: 3"))
    run_dir = RunDir(tmp_path / "run")
    run(generate_config(recipe), run_dir)
    samples = read_jsonl(run_dir.data / "samples.jsonl")
    rejected = read_jsonl(run_dir.data / "rejected.jsonl")
    assert len(samples) == 6 and all(s["votes"] >= 2 and s["answers"] == 3 for s in samples)
    assert all("agree" in r["reason"] for r in rejected if r["verifier"] == "self_consistency")


def test_answers_without_reasoning_at_their_own_temperature(tmp_path, fake_teacher):
    teacher = fake_teacher()
    recipe = load_recipe(write_recipe(tmp_path, teacher.url, target=4, teacher_extra=", temperature: 0.9, answer_temperature: 0.1",
                                      data_extra=", reasoning: false"))
    run_dir = RunDir(tmp_path / "run")
    run(generate_config(recipe), run_dir)

    def schema(body):
        return (body.get("response_format") or {}).get("json_schema", {}).get("schema", {}).get("properties", {})

    answers = [b for b in teacher.requests if "answer" in schema(b)]
    inputs = [b for b in teacher.requests if "input" in schema(b)]
    assert answers and inputs
    assert all(b["temperature"] == 0.1 and "reasoning" not in schema(b) for b in answers)
    assert all(b["temperature"] == 0.9 for b in inputs)
    shots = [m["content"] for m in answers[0]["messages"] if m["role"] == "assistant"]
    assert shots and all(set(json.loads(s)) == {"answer"} for s in shots)
    # every answer prompt is the same up to its last message (a local teacher re-reads only that)
    assert len({json.dumps(b["messages"][:-1]) for b in answers}) == 1


def test_recipe_evolutions_and_labelled_wishes_shape_the_input_requests(tmp_path, fake_teacher):
    teacher = fake_teacher()
    recipe = load_recipe(write_recipe(tmp_path, teacher.url, target=6, data_extra=(
        ", evolve_fraction: 0.5, evolutions: ['swap every number for another one'], topics: [ferries]")))
    run(generate_config(recipe), RunDir(tmp_path / "run"))
    asks = [b["messages"][-1]["content"] for b in teacher.requests
            if "input" in (b.get("response_format") or {}).get("json_schema", {}).get("schema", {}).get("properties", {})]
    rewrites = [a for a in asks if a.startswith("Rewrite")]
    fresh = [a for a in asks if a.startswith("Write one new input")]
    assert rewrites and fresh
    assert all(a.startswith("Rewrite this input so that you swap every number for another one:") for a in rewrites)
    assert all("\nTopic: ferries" in a for a in fresh)


def test_inputs_written_as_lists_each_item_answered_on_its_own(tmp_path, fake_teacher):
    teacher = fake_teacher()
    recipe = load_recipe(write_recipe(tmp_path, teacher.url, target=10, data_extra=(
        ", inputs_per_request: 4, evolve_fraction: 0.0, topics: [ferries], distinct_openings: true")))
    run_dir = RunDir(tmp_path / "run")
    manifest = run(generate_config(recipe), run_dir)
    assert manifest.figures["accepted"] == 10

    def kind(body: dict) -> str:
        schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema", {})
        return next((k for k in ("inputs", "input", "answer") if k in schema.get("properties", {})), "judge")

    lists = [b for b in teacher.requests if kind(b) == "inputs"]
    answers = [b for b in teacher.requests if kind(b) == "answer"]
    assert lists and not any(kind(b) == "input" for b in teacher.requests)
    for body in lists:
        assert body["messages"][-1]["content"].startswith("Write 4 new inputs, different from the examples")
        assert "\nTopic: ferries" in body["messages"][-1]["content"]
        assert "\nAll 4 ask for the topic's action, each opening with a different word." in body["messages"][-1]["content"]
        assert body["max_tokens"] == 4 * 64  # room for the whole list
    # each list is asked for once and feeds four items, each answered in its own request
    assert len({json.dumps([b["messages"], b["seed"]]) for b in lists}) == len(lists)
    attempts = len(read_jsonl(run_dir.data / "samples.jsonl")) + len(read_jsonl(run_dir.data / "rejected.jsonl"))
    # every recorded attempt came from a list; workers go on taking items while an earlier, slower one holds
    # up the writes, and those late finishers are not recorded once the target is met (their replies stay
    # cached for a later, larger run), so what bounds the lists is the attempt budget, never more
    budget = math.ceil(recipe.data.target_samples * recipe.critic.max_attempts_factor)
    assert -(-attempts // 4) <= len(lists) <= -(-budget // 4)
    written = {s for b in lists for s in json.loads(teacher.reply(b)["choices"][0]["message"]["content"])["inputs"]}
    asked = {b["messages"][-1]["content"] for b in answers}
    assert asked <= written and len(asked) >= 10
    kept = read_jsonl(run_dir.data / "samples.jsonl")
    assert all(row["input"] in written for row in kept)
    # a second run spends nothing: lists and answers come from the cache
    before = len(teacher.requests)
    run(generate_config(recipe), run_dir)
    assert len(teacher.requests) == before


def test_an_input_that_repeats_the_requests_own_ask_is_rejected_and_openings_are_free_by_default(tmp_path, fake_teacher):
    teacher = fake_teacher(echo_ask=True)
    recipe = load_recipe(write_recipe(tmp_path, teacher.url, target=9, data_extra=(
        ", inputs_per_request: 4, evolve_fraction: 0.0, topics: [ferries]")))
    run_dir = RunDir(tmp_path / "run")
    run(generate_config(recipe), run_dir)
    kept = read_jsonl(run_dir.data / "samples.jsonl")
    echoes = [r for r in read_jsonl(run_dir.data / "rejected.jsonl") if r["reason"].startswith("input: the input "
                                                                                                 "repeats")]
    assert len(kept) == 9 and echoes  # the last of every list echoed "write four new inputs, different from ..."
    assert all(r["verifier"] == "parse" for r in echoes)
    assert not any("different from the examples" in row["input"] for row in kept)
    lists = [b["messages"][-1]["content"] for b in teacher.requests if "inputs" in
             (b.get("response_format") or {}).get("json_schema", {}).get("schema", {}).get("properties", {})]
    assert lists and not any("opening with a different word" in ask for ask in lists)


def test_echoes_ask_needs_five_words_of_the_ask_in_a_row():
    from kit.distill.prompts import echoes_ask

    messages = [{"role": "system", "content": "You write inputs."},
                {"role": "user", "content": "Rewrite this input 4 different ways, each so that you change every "
                                            "name:\nput dentist appointment on my calendar"}]
    assert echoes_ask(messages, "rewrite this input to 4 different ways, each so that you change every name: x")
    assert not echoes_ask(messages, "put dentist appointment on my calendar for 2027-01-02")  # the quoted seed
    assert not echoes_ask(messages, "change every alarm to 7am")  # 2 words in a row


def kit(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kit", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_resume_after_kill_loses_nothing_and_repeats_nothing(tmp_path, fake_teacher):
    teacher = fake_teacher(delay_s=0.15)
    write_recipe(tmp_path, teacher.url, target=16)
    samples_file = tmp_path / "runs" / "fake-task" / "data" / "samples.jsonl"
    first = kit("generate", "recipe.yaml", "--no-progress", cwd=tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if samples_file.exists() and len(samples_file.read_text().splitlines()) >= 5:
            break
        assert first.poll() is None, first.communicate()
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    before = read_jsonl(samples_file)
    assert 5 <= len(before) < 16
    answered_before = len(teacher.bodies)

    second = kit("generate", "recipe.yaml", "--no-progress", cwd=tmp_path)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    after = read_jsonl(samples_file)
    ids = [s["id"] for s in after]
    assert len(after) == 16 and len(set(ids)) == 16
    assert after[: len(before)] == before  # what was accepted stays, byte for byte, in order
    rejected = read_jsonl(samples_file.with_name("rejected.jsonl"))
    assert len({r["index"] for r in rejected + after}) == len(rejected) + len(after)
    # only requests in flight at the kill may be asked again (at most `concurrency` of them)
    repeats = len(teacher.bodies) - len(set(teacher.bodies))
    assert repeats <= 3 and len(teacher.bodies) > answered_before
    stats = json.loads((samples_file.parent / "stats.json").read_text())
    assert stats["teacher"]["repeated_requests"] == 0  # no answer the cache held was paid for again


def test_unreachable_teacher_is_one_clear_message(tmp_path, free_port):
    url = f"http://127.0.0.1:{free_port()}/v1"
    write_recipe(tmp_path, url, target=2)
    process = kit("generate", "recipe.yaml", "--no-progress", cwd=tmp_path)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "Traceback" not in err + out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and url in lines[0] and "teacher.base_url" in lines[0]


def test_bad_recipe_is_one_clear_message(tmp_path):
    (tmp_path / "recipe.yaml").write_text(textwrap.dedent("""\
        task: {name: fake-task, description: Turn a request into a distance with its unit.}
        seeds: [{input: a, output: b}]
        teacher: {backend: ollama}
        data: {target_samples: 0}
        """))
    process = kit("generate", "recipe.yaml", cwd=tmp_path)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1 and "Traceback" not in err + out
    assert "teacher.backend" in err and "data.target_samples" in err
    missing = kit("generate", "nope.yaml", cwd=tmp_path)
    out, err = missing.communicate(timeout=60)
    assert missing.returncode == 1 and "recipe not found" in err and "Traceback" not in err


def test_a_torn_last_line_is_cut_when_the_log_is_opened_again(tmp_path):
    from kit.distill.sample_store import JsonlLog

    path = tmp_path / "samples.jsonl"
    path.write_text('{"id": "a", "index": 0}\n{"id": "b", "ind')  # killed in the middle of a write
    log = JsonlLog(path)
    assert [row["id"] for row in log.rows] == ["a"]
    log.append({"id": "c", "index": 2})
    log.close()
    assert [row["id"] for row in read_jsonl(path)] == ["a", "c"]


def test_topics_are_taken_in_turn_so_every_topic_gets_its_share():
    from collections import Counter
    from types import SimpleNamespace

    from kit.distill.config import DataConfig, RoundConfig
    from kit.distill.prompts import plan_item

    topics = ["a", "b", "c", "d", "e"]
    for per_request in (1, 4):
        config = SimpleNamespace(seeds=[object()] * 3, data=DataConfig(topics=topics, inputs_per_request=per_request),
                                 round=RoundConfig())
        plan = [plan_item(config, i) for i in range(60 * per_request)]
        fresh = [p for p in plan if p.evolve_seed is None]
        rewrites = [p for p in plan if p.evolve_seed is not None]
        assert fresh and rewrites and all(p.topic is None for p in rewrites)
        # the units that rewrite a seed do not cost a topic its turn, and the seeds are rewritten in turn too
        topic_counts = Counter(p.topic for p in fresh)
        assert set(topic_counts) == set(topics) and max(topic_counts.values()) - min(topic_counts.values()) <= per_request
        seed_counts = Counter(p.evolve_seed for p in rewrites)
        assert set(seed_counts) == {0, 1, 2} and max(seed_counts.values()) - min(seed_counts.values()) <= per_request
        if per_request > 1:  # the items of one list share its plan
            assert all(plan[i].topic == plan[i - i % per_request].topic for i in range(len(plan)))
    assert plan_item(config, 7) == plan_item(config, 7)  # the same recipe gives the same plan


def test_wordings_are_listed_once_per_topic_and_each_list_asks_for_its_own(tmp_path, fake_teacher):
    teacher = fake_teacher()
    recipe = load_recipe(write_recipe(tmp_path, teacher.url, target=12, data_extra=(
        ", inputs_per_request: 2, evolve_fraction: 0.0, wordings: 3")))
    run_dir = RunDir(tmp_path / "run")
    assert run(generate_config(recipe), run_dir).figures["accepted"] == 12

    def kind(body: dict) -> str:
        schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema", {})
        return next((k for k in ("wordings", "inputs", "input", "answer") if k in schema.get("properties", {})),
                    "judge")

    asked = [b for b in teacher.requests if kind(b) == "wordings"]
    assert len(asked) == 2 and all(b["max_tokens"] >= 3 * 32 for b in asked)  # one request per topic
    stats = json.loads((run_dir.data / "stats.json").read_text())
    # the repeated wording counts once: each topic keeps two
    assert stats["wordings"] == {"hiking": ["hiking-0", "hiking-1"], "flights": ["flights-0", "flights-1"]}
    lists = [b["messages"][-1]["content"] for b in teacher.requests if kind(b) == "inputs"]
    assert lists
    for ask in lists:
        topic = ask.split("\nTopic: ", 1)[1].split("\n", 1)[0]
        words = ask.split("one input each, in this order:\n", 1)[1].split("\n")
        assert len(words) == 2 and all(w.startswith(f"- {topic}-") for w in words)
    # taken in turn: a topic's lists together use each of its wordings about as often
    per_topic: dict[str, list[str]] = {}
    for ask in lists:
        topic = ask.split("\nTopic: ", 1)[1].split("\n", 1)[0]
        per_topic.setdefault(topic, []).extend(ask.split("one input each, in this order:\n", 1)[1].split("\n"))
    for words in per_topic.values():
        counts = [words.count(w) for w in set(words)]
        assert max(counts) - min(counts) <= 1
    # a rerun asks for nothing new: the wordings come from the teacher cache, and so the same plan
    before = len(teacher.requests)
    run(generate_config(recipe), run_dir, force=True)
    assert len(teacher.requests) == before


def test_the_same_teacher_replies_give_the_same_samples_whatever_order_they_come_back_in(tmp_path, fake_teacher):
    """Results are written in plan order: which of two near-duplicates is kept does not depend on timing."""
    runs = []
    for attempt in range(2):
        teacher = fake_teacher(jitter_s=0.05, vocab=VOCAB[:2])  # two words: many near-duplicates to choose between
        folder = tmp_path / f"build{attempt}"
        folder.mkdir()
        recipe = load_recipe(write_recipe(folder, teacher.url, target=12,
                                          data_extra=", evolve_fraction: 0.0"))
        run_dir = RunDir(folder / "run")
        run(generate_config(recipe), run_dir)
        runs.append((read_jsonl(run_dir.data / "samples.jsonl"), read_jsonl(run_dir.data / "rejected.jsonl")))
    (kept_a, rejected_a), (kept_b, rejected_b) = runs
    assert any(r["verifier"] == "dedup" for r in rejected_a)  # the order mattered somewhere
    assert [(r["index"], r["id"]) for r in kept_a] == [(r["index"], r["id"]) for r in kept_b]
    assert [(r["index"], r["reason"]) for r in rejected_a] == [(r["index"], r["reason"]) for r in rejected_b]


def _written_inputs(reply: dict) -> list[str]:
    content = json.loads(reply["choices"][0]["message"]["content"])
    return content["inputs"] if "inputs" in content else [content["input"]]


def test_a_near_duplicate_input_is_cut_before_its_answer_is_paid_for(tmp_path, fake_teacher):
    teacher = fake_teacher(vocab=VOCAB[:2])  # two words: many near-duplicates
    recipe = load_recipe(write_recipe(tmp_path, teacher.url, target=12, data_extra=", evolve_fraction: 0.0"))
    run_dir = RunDir(tmp_path / "run")
    run(generate_config(recipe), run_dir)
    rejected = read_jsonl(run_dir.data / "rejected.jsonl")
    unanswered = [r for r in rejected if r["verifier"] == "dedup" and "output" not in r]
    assert unanswered, "some near-duplicates should be cut before the teacher answers them"
    def properties(request: dict) -> dict:
        return request["response_format"]["json_schema"]["schema"]["properties"]

    written = Counter(text for r in teacher.requests if {"input", "inputs"} & set(properties(r))
                      for text in _written_inputs(teacher.reply(r)))
    answered = Counter(r["messages"][-1]["content"] for r in teacher.requests if "answer" in properties(r))
    cut_first = Counter(r["input"] for r in unanswered)
    # every written input is answered or cut before its answer, never both
    assert all(answered[text] + cut_first[text] <= written[text] for text in cut_first)
    stats = json.loads((run_dir.data / "stats.json").read_text())
    steps = [s["step"] for s in stats["steps"]]
    assert steps.index("dedup") < steps.index("json_schema")  # the input's own checks come first


def test_requests_spread_over_several_endpoints_and_one_that_dies_is_set_aside(tmp_path, fake_teacher):
    dying, steady = fake_teacher(faults={4: "die"}), fake_teacher()
    recipe = load_recipe(write_recipe(tmp_path, dying.url, target=10))
    recipe.teacher.base_url = [dying.url, steady.url]
    run_dir = RunDir(tmp_path / "run")
    assert run(generate_config(recipe), run_dir).figures["accepted"] == 10
    teacher = json.loads((run_dir.data / "stats.json").read_text())["teacher"]
    assert teacher["failed"] == 0  # whatever failed at the dead endpoint was answered by the other one
    endpoints = teacher["endpoints"]
    # the dying one answered its first 3 requests (and any that were in flight as it went down)
    assert endpoints[dying.url]["requests"] >= 3 and endpoints[dying.url]["failures"] >= 1
    assert endpoints[steady.url]["requests"] > endpoints[dying.url]["requests"]
    # one cache for both: a rerun asks neither
    before = len(steady.requests)
    run(generate_config(recipe), run_dir, force=True)
    assert len(steady.requests) == before


def test_teacher_url_takes_several_endpoints_comma_separated():
    from kit.cli.distill import _endpoints
    from kit.distill.config import TeacherConfig

    assert _endpoints("http://a/v1") == "http://a/v1"
    assert _endpoints("http://a/v1, http://b/v1") == ["http://a/v1", "http://b/v1"]
    assert TeacherConfig(base_url=["http://a/v1", "http://b/v1"]).base_urls == ["http://a/v1", "http://b/v1"]
    with pytest.raises(ValueError):
        TeacherConfig(base_url=[])


def test_unit_plans_are_remembered_for_a_few_rounds_only():
    """Each unit's kind is drawn once per plan and remembered, but only the newest plans are kept."""
    from kit.distill import prompts

    first = prompts._unit_kinds("plan-0", 4, 0.4, 0.0, 30)
    for n in range(1, 3 * prompts._KINDS_KEPT):
        prompts._unit_kinds(f"plan-{n}", 4, 0.4, 0.0, 30)
    assert len(prompts._KINDS) <= prompts._KINDS_KEPT
    assert prompts._unit_kinds("plan-0", 4, 0.4, 0.0, 30) == first  # drawn again, the same plan
