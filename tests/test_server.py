"""`kit serve` answers the official openai client over loopback; bad requests get OpenAI-shaped 4xx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest

pytestmark = pytest.mark.slow
API_KEY = "test-key-123"
MODEL = "person-extractor"


def _wait_ready(url: str, process: subprocess.Popen | None = None, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("server did not come up")


@pytest.fixture(scope="module")
def server(task_bundle, free_port):
    """`kit serve` in a subprocess on a free loopback port, with an API key from an environment variable."""
    port = free_port()
    env = {**os.environ, "MICROKIT_TEST_KEY": API_KEY}
    process = subprocess.Popen(
        [sys.executable, "-m", "kit", "serve", str(task_bundle), "--port", str(port), "--api-key-env",
         "MICROKIT_TEST_KEY", "--n-ctx", "1024", "--max-tokens-limit", "256", "--max-body-bytes", "20000"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def test_openai_client_chats_streaming_and_not(client):
    messages = [{"role": "user", "content": "Sam is 29."}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0)
    content = reply.choices[0].message.content
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 16 and content
    finish_reason = "length" if reply.usage.completion_tokens == 16 else "stop"  # max_tokens or end of turn
    assert reply.choices[0].finish_reason == finish_reason
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
    assert chunks[-1].choices[0].finish_reason == finish_reason


def test_json_schema_response_validates(client, person_schema):
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Maria Lopez is 34 years old."}], max_tokens=48,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": person_schema, "strict": True}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), person_schema)
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Any JSON."}],
                                           max_tokens=48, response_format={"type": "json_object"}, seed=3)
    json.loads(reply.choices[0].message.content)


def test_text_completions_and_model_list(client):
    assert [m.id for m in client.models.list()] == [MODEL]
    reply = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, stop=["\n\n"])
    assert reply.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=6, stop=["\n\n"], stream=True))
    assert streamed == reply.choices[0].text


def test_eight_concurrent_clients_are_all_answered(client):
    def ask(i: int) -> str:
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"Person {i} is {20 + i}."}],
                                               max_tokens=8)
        return reply.choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert len(answers) == 8 and all(answers)


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    return body["error"]


def test_bad_requests_get_openai_shaped_4xx(server, client):
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    chat = server + "/v1/chat/completions"
    good = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

    response = httpx.post(chat, content=b'{"model": "x", "messages": [', headers=headers)
    assert response.status_code == 400 and _error(response)["code"] == "invalid_json"
    for field, value in (("messages", "hi"), ("max_tokens", "lots"), ("temperature", [1]), ("stop", 5)):
        response = httpx.post(chat, json={**good, field: value}, headers=headers)
        assert response.status_code == 400, field
        assert _error(response)["param"].startswith(field)
    response = httpx.post(chat, json={**good, "max_tokens": 10**6}, headers=headers)
    assert response.status_code == 400 and _error(response)["param"] == "max_tokens"
    response = httpx.post(chat, json={**good, "messages": [{"role": "user", "content": "x" * 30000}]}, headers=headers)
    assert response.status_code == 413 and _error(response)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=good["messages"], max_tokens=4)
    assert unknown.value.body["code"] == "model_not_found"
    keyless = openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        keyless.chat.completions.create(model=MODEL, messages=good["messages"], max_tokens=4)
    response = httpx.post(chat, json=good)
    assert response.status_code == 401 and _error(response)["code"] == "invalid_api_key"
    assert httpx.get(server + "/health").json()["model"] == MODEL


def test_metrics_count_requests_and_tokens(server, client):
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    text = httpx.get(server + "/metrics").text
    assert 'microkit_requests_total{path="/v1/chat/completions",status="200"}' in text
    assert "microkit_completion_tokens_total" in text and "microkit_requests_running 0" in text


# -- an in-process server from the factory, with no queue: 503 when busy, and disconnects free the slot --
@pytest.fixture(scope="module")
def busy_server(task_bundle, free_port):
    import uvicorn

    from runtime.server import ServerSettings, create_app

    settings = ServerSettings(model=str(task_bundle), port=free_port(), max_queue=0, n_ctx=1024)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    _wait_ready(url)
    yield url
    server.should_exit = True
    thread.join(timeout=30)
    app.state.expert.close()


def _running(url: str) -> int:
    line = next(l for l in httpx.get(url + "/metrics").text.splitlines() if l.startswith("microkit_requests_running "))
    return int(line.split()[1])


def test_disconnecting_mid_stream_frees_the_slot_and_a_full_queue_gets_503(busy_server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 400,
            "stream": True}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", busy_server + "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))
            rejected = httpx.post(busy_server + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 4})
            assert rejected.status_code == 503 and _error(rejected)["code"] == "server_busy"
        for _ in range(300):  # the slot frees once the worker notices the disconnect (a token or so)
            if _running(busy_server) == 0:
                break
            time.sleep(0.05)
        assert _running(busy_server) == 0
        answered = http.post(busy_server + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 4})
        assert answered.status_code == 200
        assert "microkit_stream_disconnects_total 1" in http.get(busy_server + "/metrics").text
