"""Teacher backends against real models: the openai backend through a real llama.cpp server (end to end
generation), the in-process llama_cpp backend and the hf backend."""

from __future__ import annotations

import asyncio
import http.server
import json
import subprocess
import sys
import threading
import time

import httpx
import pytest

from kit.distill.config import TeacherConfig
from kit.distill.critic.confident import answer_confidence
from kit.distill.teachers import make_teacher

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
          "required": ["city", "days"]}
MESSAGES = [{"role": "system", "content": "You plan trips. Reply with JSON only."},
            {"role": "user", "content": "A weekend in Rome."}]


def start_llama_server(model, port: int, log) -> tuple[subprocess.Popen, str]:
    """A real llama-cpp-python server on loopback; returns it once it answers /v1/models."""
    with open(log, "wb") as sink:  # a file, not a pipe: a full pipe would stall the server
        process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host",
                                    "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--verbose", "False"],
                                   stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"llama.cpp server did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.3)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def llama_server(store_gguf, free_port, tmp_path_factory):
    """A real llama-cpp-python server on loopback with the store's SmolLM2-135M."""
    process, url = start_llama_server(store_gguf, free_port(), tmp_path_factory.mktemp("llama-server") / "server.log")
    yield url
    stop(process)


def complete_once(config: TeacherConfig, cache_path=None, schema=SCHEMA, runs: int = 1, token_probs: bool = False):
    async def go():
        client = make_teacher(config, cache_path, token_probs=token_probs)
        try:
            await client.backend.check()
            replies = [await client.complete(MESSAGES, schema, client.sampling(seed=7)) for _ in range(runs)]
            return replies, client.usage
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.mark.slow
def test_openai_backend_gets_schema_constrained_json_from_llama_cpp_server(llama_server, tmp_path):
    config = TeacherConfig(backend="openai", base_url=llama_server, model="smollm2", max_tokens=64, temperature=0.2)
    (first, second), usage = complete_once(config, tmp_path / "cache.sqlite", runs=2)
    reply = json.loads(first.text)
    assert isinstance(reply["city"], str) and isinstance(reply["days"], int)
    assert first.prompt_tokens > 0 and first.completion_tokens > 0
    assert second.cached and second.text == first.text and usage.requests == 1 and usage.cached == 1


@pytest.mark.slow
def test_openai_backend_reports_token_probabilities_from_logprobs_when_asked(llama_server):
    config = TeacherConfig(backend="openai", base_url=llama_server, model="smollm2", max_tokens=64, temperature=0.2)
    (asked,), _ = complete_once(config, token_probs=True)
    assert asked.token_probs, "the endpoint's logprobs should come back as token probabilities"
    assert "".join(piece for piece, _ in asked.token_probs) == asked.text
    assert all(0.0 < p <= 1.0 for _, p in asked.token_probs)
    least = answer_confidence(asked.token_probs)
    assert least is not None and 0.0 < least[0] <= 1.0
    (plain,), _ = complete_once(config)
    assert plain.token_probs is None  # not asked: no logprobs requested


class RefusesLogprobs(http.server.BaseHTTPRequestHandler):
    """An endpoint in front of the llama.cpp server that refuses `logprobs` as OpenAI's reasoning models do."""

    upstream = ""
    refused = 0

    def do_POST(self):  # noqa: N802 (the http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "logprobs" in body:
            RefusesLogprobs.refused += 1
            self._send(400, {"error": {"message": "logprobs are not supported with this model", "param": "logprobs"}})
            return
        answer = httpx.post(f"{self.upstream}/chat/completions", json=body, timeout=60)
        self._send(answer.status_code, answer.json())

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_openai_backend_asks_again_without_logprobs_where_the_endpoint_refuses_them(llama_server):
    RefusesLogprobs.upstream = llama_server
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RefusesLogprobs)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        config = TeacherConfig(backend="openai", base_url=f"http://127.0.0.1:{proxy.server_port}/v1",
                               model="smollm2", max_tokens=64, temperature=0.2)

        async def go():
            client = make_teacher(config, None, token_probs=True)
            try:
                replies = [await client.complete(MESSAGES, SCHEMA, client.sampling(seed=s)) for s in (1, 2)]
                return replies, client.backend.notes(), client.usage
            finally:
                await client.aclose()

        replies, notes, usage = asyncio.run(go())
    finally:
        proxy.shutdown()
    assert all(isinstance(json.loads(r.text)["days"], int) and r.token_probs is None for r in replies)
    assert usage.failed == 0 and usage.retries == 0  # asked again at once, not retried
    assert RefusesLogprobs.refused == 1  # the endpoint's refusal is remembered
    assert any("refused `logprobs`" in note for note in notes)


UNIT_RECIPE = """\
task: {{name: unit-converter, description: Convert a quantity between metric and imperial units.}}
output:
  format: json
  schema: {{type: object, properties: {{value: {{type: number}}, unit: {{type: string}}}}, required: [value, unit]}}
seeds:
  - {{input: 3 miles in km, output: {{value: 4.83, unit: km}}, reasoning: 1 mile is 1.609 km.}}
  - {{input: 10 kg in pounds, output: {{value: 22.05, unit: lb}}, reasoning: 1 kg is 2.205 lb.}}
teacher: {{backend: openai, base_url: {url}, model: smollm2, max_tokens: 96, concurrency: {concurrency}}}
critic:
  verifiers: [{{type: json_schema}}, {{type: dedup}}, {{type: decontaminate}}]
data: {{target_samples: {target}, topics: [cooking, travel], validation_fraction: 0.34}}
eval: {{file: eval.jsonl}}
"""


@pytest.mark.slow
def test_two_endpoints_one_stopped_midway_the_run_finishes_with_nothing_lost(store_gguf, free_port, tmp_path):
    """Two real llama.cpp servers share the requests; one is stopped in the middle of the run: its requests go to
    the other, the run finishes, nothing kept is lost and no item runs out of retries."""
    import threading

    from kit.core.run_dir import RunDir
    from kit.distill.generate import run
    from kit.recipe.loader import load_recipe
    from kit.recipe.stages import generate_config

    first, first_url = start_llama_server(store_gguf, free_port(), tmp_path / "first.log")
    second, second_url = start_llama_server(store_gguf, free_port(), tmp_path / "second.log")
    try:
        (tmp_path / "eval.jsonl").write_text('{"input": "12 inches in cm", "output": {"value": 30.48, "unit": "cm"}}\n')
        (tmp_path / "recipe.yaml").write_text(UNIT_RECIPE.format(url=json.dumps([first_url, second_url]),
                                                                 concurrency=2, target=8))
        run_dir = RunDir(tmp_path / "run")
        finished: list = []
        worker = threading.Thread(target=lambda: finished.append(
            run(generate_config(load_recipe(tmp_path / "recipe.yaml")), run_dir)))
        worker.start()
        samples = run_dir.data / "samples.jsonl"
        while worker.is_alive() and (not samples.exists() or len(samples.read_text().splitlines()) < 2):
            time.sleep(0.1)
        kept_before = [json.loads(line)["id"] for line in samples.read_text().splitlines()]
        stop(first)  # midway: 2 of 8 samples kept
        worker.join(timeout=600)
    finally:
        stop(first)
        stop(second)
    assert finished and finished[0].figures["accepted"] == 8
    kept = [json.loads(line)["id"] for line in samples.read_text().splitlines()]
    assert set(kept_before) <= set(kept) and len(kept) == len(set(kept)) == 8
    teacher = json.loads((run_dir.data / "stats.json").read_text())["teacher"]
    assert teacher["failed"] == 0  # every request that failed at the stopped server was answered by the other
    endpoints = teacher["endpoints"]
    assert endpoints[first_url]["requests"] > 0 and endpoints[second_url]["requests"] > endpoints[first_url]["requests"]
    assert endpoints[first_url]["failures"] >= 1


@pytest.mark.slow
def test_generate_end_to_end_through_llama_cpp_server(llama_server, tmp_path):
    from datasets import load_from_disk
    from jsonschema import validate

    from kit.core.run_dir import RunDir
    from kit.distill.generate import run
    from kit.recipe.loader import load_recipe
    from kit.recipe.stages import generate_config

    (tmp_path / "eval.jsonl").write_text('{"input": "12 inches in cm", "output": {"value": 30.48, "unit": "cm"}}\n')
    recipe_path = tmp_path / "recipe.yaml"
    # with a `confident` check that cuts nothing: the endpoint's logprobs reach every sample as its least sure token
    recipe_path.write_text(UNIT_RECIPE.format(url=json.dumps(llama_server), concurrency=2, target=3).replace(
        "{type: dedup}", "{type: confident, min_p: 0.001}, {type: dedup}"))
    recipe = load_recipe(recipe_path)
    run_dir = RunDir(tmp_path / "run")
    manifest = run(generate_config(recipe), run_dir)
    assert manifest.figures["accepted"] == 3
    kept = [json.loads(line) for line in (run_dir.data / "samples.jsonl").read_text().splitlines()]
    assert all(0.0 < row["least_p"] <= 1.0 and row["least_token"] for row in kept)
    dataset = load_from_disk(str(run_dir.dataset))
    rows = list(dataset["train"]) + list(dataset["validation"])
    # 3 generated samples (one of them validation) and the 2 seeds, which join train
    assert len(rows) == 5 and dataset["validation"].num_rows == 1
    assert sorted(r["id"] for r in rows if r["id"].startswith("seed-")) == ["seed-1", "seed-2"]
    for row in rows:
        validate(json.loads(row["output"]), recipe.output.json_schema)
        assert row["messages"][-1] == {"role": "assistant", "content": row["output"]}
    stats = json.loads((run_dir.data / "stats.json").read_text())
    assert stats["teacher"]["requests"] >= 6 and stats["tokens"]["completion"] > 0
    assert any("before the JSON grammar" in note for note in stats["notes"])


@pytest.mark.slow
def test_llama_cpp_backend_in_process_follows_the_schema(tmp_path):
    config = TeacherConfig(backend="llama_cpp", model="smollm2-135m-instruct", max_tokens=64, n_ctx=1024,
                           temperature=0.2)
    (reply,), usage = complete_once(config)
    value = json.loads(reply.text)
    assert isinstance(value["city"], str) and isinstance(value["days"], int)
    assert usage.completion_tokens > 0
    assert reply.token_probs is None  # not asked for (no `confident` check)


@pytest.mark.slow
def test_llama_cpp_backend_keeps_a_context_per_system_prompt_and_follows_the_schema():
    from kit.distill.teachers.llama_cpp_backend import LlamaCppTeacher

    backend = LlamaCppTeacher(TeacherConfig(backend="llama_cpp", model="smollm2-135m-instruct", max_tokens=48,
                                            n_ctx=1024, temperature=0.0, concurrency=1))
    other = [{"role": "system", "content": "You name colours."}, {"role": "user", "content": "The sky?"}]
    # a reply written freely cannot hold this constant: the grammar must step in
    strict = {"type": "object", "properties": {"code": {"const": "QX-17"}}, "required": ["code"]}

    async def scenario():
        await backend.check()
        first = await backend.complete(MESSAGES, strict, {"max_tokens": 48, "temperature": 0.0})
        await backend.complete(other, None, {"max_tokens": 8, "temperature": 0.0})
        trip = backend._contexts[backend._context_key(MESSAGES)]
        kept = trip.n_tokens  # the trip context still holds its prompt after the other system prompt ran
        await backend.complete(MESSAGES[:1] + [{"role": "user", "content": "Two days in Oslo."}], None,
                               {"max_tokens": 8, "temperature": 0.0})
        return first, kept, len(backend._contexts)

    try:
        first, kept, contexts = asyncio.run(scenario())
    finally:
        asyncio.run(backend.aclose())
    assert json.loads(first.text) == {"code": "QX-17"}
    assert kept > 0 and contexts == 2


@pytest.mark.slow
def test_llama_cpp_backend_batches_concurrent_requests_and_shares_their_prefix():
    from kit.distill.teachers.llama_cpp_backend import LlamaCppTeacher

    backend = LlamaCppTeacher(TeacherConfig(backend="llama_cpp", model="smollm2-135m-instruct", max_tokens=40,
                                            n_ctx=1024, temperature=0.0, concurrency=3))
    backend.token_probs = True  # as make_teacher sets it for a critic with a `confident` check
    strict = {"type": "object", "properties": {"code": {"const": "QX-17"}}, "required": ["code"]}
    cities = ["Rome", "Oslo", "Lima", "Kyoto", "Quito"]
    greedy = {"max_tokens": 40, "temperature": 0.0}

    def ask(city: str) -> list[dict[str, str]]:
        return MESSAGES[:1] + [{"role": "user", "content": f"A weekend in {city}."}]

    async def scenario():
        await backend.check()
        alone = await backend.complete(ask("Rome"), None, greedy)
        together = await asyncio.gather(
            *(backend.complete(ask(city), strict if i % 2 else None, greedy | {"seed": i}) for i, city in enumerate(cities)),
            backend.complete(ask("Bern"), SCHEMA, {"max_tokens": 40, "temperature": 0.9, "seed": 7}))
        engine = backend._engine
        return alone, together, engine.reused_tokens, engine.decode_calls, engine.decoded_tokens

    try:
        alone, together, reused, calls, decoded = asyncio.run(scenario())
    finally:
        asyncio.run(backend.aclose())
    assert backend._engine is None  # closed
    for i, reply in enumerate(together[:-1]):
        if i % 2:
            assert json.loads(reply.text) == {"code": "QX-17"}  # the grammar holds inside a batch
        else:
            assert reply.text.strip() and reply.completion_tokens > 0
    trip = json.loads(together[-1].text)
    assert isinstance(trip["city"], str) and isinstance(trip["days"], int)
    assert together[0].text[:20] == alone.text[:20]  # greedy: the same start alone and in a batch
    for reply in together:  # asked, a schema reply says how sure the model was of each token; a free one does not
        if reply.token_probs is None:
            continue
        assert "".join(piece for piece, _ in reply.token_probs) == reply.text
        assert all(0.0 <= p <= 1.0 for _, p in reply.token_probs) and max(p for _, p in reply.token_probs) > 0.5
    assert [r.token_probs is not None for r in together] == [False, True, False, True, False, True]
    assert reused > 0  # later requests read only what follows the shared system prompt
    assert calls < decoded  # sequences shared decode calls


@pytest.mark.slow
def test_llama_cpp_batched_request_longer_than_the_context_is_one_clear_error():
    from kit.core.errors import UserError
    from kit.distill.teachers.llama_cpp_backend import LlamaCppTeacher

    backend = LlamaCppTeacher(TeacherConfig(backend="llama_cpp", model="smollm2-135m-instruct", n_ctx=256,
                                            concurrency=2))
    long = [{"role": "system", "content": "background " * 300}, {"role": "user", "content": "hi"}]

    async def scenario():
        await backend.check()
        return await backend.complete(long, None, {"max_tokens": 16, "temperature": 0.0})

    try:
        with pytest.raises(UserError, match="teacher.n_ctx"):
            asyncio.run(scenario())
    finally:
        asyncio.run(backend.aclose())


def test_hf_backend_generates_from_a_local_transformers_model(tiny_llama, tmp_path):
    config = TeacherConfig(backend="hf", model=str(tiny_llama), max_tokens=16, temperature=0.7)
    (reply,), usage = complete_once(config, tmp_path / "cache.sqlite")
    assert reply.text.strip() and 0 < reply.completion_tokens <= 16 and reply.prompt_tokens > 0
    assert usage.requests == 1


@pytest.mark.slow
def test_llama_cpp_batched_requests_sent_together_read_their_shared_prompt_once():
    from kit.distill.teachers.llama_cpp_backend import LlamaCppTeacher

    backend = LlamaCppTeacher(TeacherConfig(backend="llama_cpp", model="smollm2-135m-instruct", n_ctx=2048,
                                            concurrency=4, temperature=0.0))
    # longer than one decode batch (512 tokens): the others arrive while the first is still reading it
    rules = " ".join(f"Rule {i}: answer in one short sentence about item {i}." for i in range(110))
    asks = [[{"role": "system", "content": rules}, {"role": "user", "content": f"Item {i}?"}] for i in range(4)]

    async def scenario():
        await backend.check()
        replies = await asyncio.gather(*(backend.complete(m, None, {"max_tokens": 8, "temperature": 0.0}) for m in asks))
        return replies, backend._engine.reused_tokens

    try:
        replies, reused = asyncio.run(scenario())
    finally:
        asyncio.run(backend.aclose())
    prompt = min(r.prompt_tokens for r in replies)
    assert prompt > 1200
    # the first request reads the shared system prompt; the three sent with it wait for that read, then reuse it
    assert reused >= 3 * (prompt - 20)
