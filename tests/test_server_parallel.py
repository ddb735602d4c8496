"""Concurrent serving: `Expert(parallel=N)` and `kit serve --parallel N` decode requests together in one
llama.cpp context (the runtime's BatchEngine), each with its own sampling, JSON schema, stop strings and
stream; a client that leaves frees its slot; a shared prompt prefix is read once."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import serving

pytestmark = pytest.mark.slow
MODEL = "person-extractor"
PEOPLE = ["Sam is 29.", "Ana turned 41 today.", "My uncle Bob is 63.", "Lena, 17, plays chess.",
          "Priya is 35 years old.", "Tom is 8.", "Grandma Rose is 90.", "Kai is 22."]


@pytest.fixture(scope="module")
def parallel_expert(task_bundle):
    from runtime.expert import Expert

    expert = Expert.load(task_bundle, parallel=4, n_ctx=1024)
    yield expert
    expert.close()


def test_run_many_answers_every_input_in_order_with_the_schema(parallel_expert, person_schema):
    assert parallel_expert.parallel == 4
    answers = parallel_expert.run_many(PEOPLE)
    assert len(answers) == len(PEOPLE)
    for answer in answers:
        jsonschema.validate(answer, person_schema)
    # each answer is the one its own input gets when asked alone (short, decisive JSON answers)
    alone = [parallel_expert.run(PEOPLE[i]) for i in (0, 5)]
    assert alone == [answers[0], answers[5]]
    stats = parallel_expert.backend.cache_stats()
    assert stats["reused_tokens"] > 0  # the system prompt and template head were read once, then shared


def test_stop_strings_streams_and_lengths_in_batched_mode(parallel_expert):
    messages = [{"role": "user", "content": "Sam is 29 and lives in Oslo."}]
    free = parallel_expert.chat(messages, max_tokens=40)
    assert len(free) > 8
    stop = free[len(free) // 2:len(free) // 2 + 3]  # a stop string that falls mid-answer (maybe mid-token)
    stopped = "".join(parallel_expert.stream(messages, max_tokens=40, stop=["@@never@@", stop]))
    assert stopped == free[:free.index(stop)]
    from runtime.params import GenerationStats

    stats = GenerationStats()
    text = "".join(parallel_expert.generate(parallel_expert.render(messages), parallel_expert.params(max_tokens=5),
                                            stats))
    assert stats.finish_reason == "length" and stats.completion_tokens == 5 and text


def test_closing_a_stream_early_frees_its_slot(parallel_expert):
    engine = parallel_expert.backend.engine
    pieces = parallel_expert.stream([{"role": "user", "content": "Tell a long story about a dragon."}],
                                    max_tokens=400, temperature=0.8)
    next(pieces)
    pieces.close()
    for _ in range(200):
        if not any(slot.request for slot in engine.slots):
            break
        time.sleep(0.02)
    assert not any(slot.request for slot in engine.slots)


def test_run_many_can_return_exceptions_in_place(parallel_expert):
    from runtime.errors import OutputError

    answers = parallel_expert.run_many(["Sam is 29.", "Ana is 41."], return_exceptions=True, max_tokens=3)
    assert all(isinstance(a, OutputError) for a in answers)  # 3 tokens cannot close the JSON object
    with pytest.raises(OutputError):
        parallel_expert.run_many(["Sam is 29."], max_tokens=3)


# -- a real server with 4 slots: 16 concurrent openai-client streams, mixed response_format, two disconnects ----
@pytest.fixture(scope="module")
def parallel_server(task_bundle, free_port):
    from runtime.server import ServerSettings, create_app

    settings = ServerSettings(model=str(task_bundle), port=free_port(), parallel=4, max_queue=16, n_ctx=1024)
    app = create_app(settings)
    with serving(app, settings.port) as url:
        yield url
    app.state.expert.close()


def _metric(url: str, name: str) -> float:
    line = next(l for l in httpx.get(url + "/metrics").text.splitlines() if l.startswith(name + " "))
    return float(line.split()[1])


def test_sixteen_concurrent_streams_mixed_formats_and_two_disconnects(parallel_server, person_schema):
    client = openai.OpenAI(base_url=parallel_server + "/v1", api_key="none", max_retries=0, timeout=300)
    schema_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": person_schema}}

    def one(i: int) -> tuple[str, str | None]:
        kwargs = {"response_format": schema_format} if i % 2 == 0 else {}
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PEOPLE[i % len(PEOPLE)]}], stream=True,
            max_tokens=48 if i % 2 == 0 else 64, **kwargs)
        text, finish = "", None
        for n, chunk in enumerate(stream):
            if i in (3, 7) and n == 2:  # these two clients leave mid-stream
                stream.close()
                return "left", None
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    for i, (text, finish) in enumerate(results):
        if i in (3, 7):
            assert text == "left"
        elif i % 2 == 0:
            assert finish == "stop", (i, text)
            jsonschema.validate(json.loads(text), person_schema)
        else:
            assert text and finish in ("stop", "length"), (i, text)
    for _ in range(200):
        if _metric(parallel_server, "microkit_requests_running") == 0:
            break
        time.sleep(0.05)
    assert _metric(parallel_server, "microkit_requests_running") == 0
    assert _metric(parallel_server, "microkit_stream_disconnects_total") == 2
    assert _metric(parallel_server, "microkit_slots") == 4
    assert _metric(parallel_server, "microkit_prefix_cache_hit_ratio") > 0
    assert _metric(parallel_server, "microkit_completion_tokens_per_second") > 0


def test_cache_prompt_false_in_the_request_reads_the_prompt_from_scratch(parallel_server):
    """llama-server's per-request `cache_prompt` field: false starts from the prompt's first token."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": PEOPLE[2]}], "max_tokens": 16, "temperature": 0}
    with httpx.Client(timeout=120) as http:
        cached = http.post(parallel_server + "/v1/chat/completions", json=body).json()
        reused = _metric(parallel_server, "microkit_prefix_cache_reused_tokens_total")
        scratch = http.post(parallel_server + "/v1/chat/completions", json=body | {"cache_prompt": False}).json()
    assert _metric(parallel_server, "microkit_prefix_cache_reused_tokens_total") == reused
    assert scratch["choices"][0]["message"]["content"] == cached["choices"][0]["message"]["content"]
