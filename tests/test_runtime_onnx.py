"""The ONNX backend (onnxruntime + tokenizers, KV cache in numpy) against llama.cpp on the same tiny model."""

from __future__ import annotations

import pytest

from runtime import BundleError, Expert, GenerationStats

PROMPTS = ["set a timer for", "call mom and send", "the weather in"]


@pytest.fixture(scope="module")
def onnx_expert(tiny_exports):
    with Expert.load(tiny_exports["onnx"], n_ctx=512) as expert:
        yield expert


@pytest.fixture(scope="module")
def gguf_expert(tiny_exports):
    with Expert.load(tiny_exports["gguf"], n_ctx=512) as expert:
        yield expert


def test_onnx_and_gguf_give_the_same_greedy_answer_for_fp32_exports(onnx_expert, gguf_expert):
    for prompt in PROMPTS:
        onnx_answer = onnx_expert.complete(prompt, max_tokens=24, temperature=0)
        assert onnx_answer.strip(), prompt
        assert onnx_answer == gguf_expert.complete(prompt, max_tokens=24, temperature=0), prompt
    messages = [{"role": "user", "content": "send a message"}]
    assert onnx_expert.chat(messages, max_tokens=24) == gguf_expert.chat(messages, max_tokens=24)


def test_bare_onnx_folder_renders_its_own_chat_template(onnx_expert):
    prompt = onnx_expert.render([{"role": "user", "content": "hi"}])
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_stream_yields_the_same_text_as_chat(onnx_expert):
    messages = [{"role": "user", "content": "weather in paris"}]
    pieces = list(onnx_expert.stream(messages, max_tokens=16))
    assert len(pieces) > 1
    assert "".join(pieces) == onnx_expert.chat(messages, max_tokens=16)


def test_max_tokens_and_stop_strings_end_generation(onnx_expert):
    stats = GenerationStats()
    text = "".join(onnx_expert.generate("set a timer for", onnx_expert.params(max_tokens=5), stats))
    assert (stats.completion_tokens, stats.finish_reason) == (5, "length")
    full = onnx_expert.complete("set a timer for", max_tokens=24)
    stop = full.strip().split()[2]
    stats = GenerationStats()
    cut = "".join(onnx_expert.generate("set a timer for", onnx_expert.params(max_tokens=24, stop=[stop]), stats))
    assert stats.finish_reason == "stop" and stop not in cut and full.startswith(cut)
    assert text


def test_sampling_is_reproducible_with_a_seed(onnx_expert):
    settings = dict(max_tokens=16, temperature=1.2, top_k=20, top_p=0.9, repeat_penalty=1.3)
    first = onnx_expert.complete("call", seed=7, **settings)
    assert first == onnx_expert.complete("call", seed=7, **settings)
    others = {onnx_expert.complete("call", seed=s, **settings) for s in range(8, 12)}
    assert len(others | {first}) > 1


def test_onnx_bundle_loads_either_backend_from_its_manifest(tiny_exports, tmp_path, write_bundle):
    bundle = write_bundle(tmp_path / "both", [(tiny_exports["onnx"], "onnx", "fp32"), (tiny_exports["gguf"], "gguf", "F32")],
                          name="tiny", system_prompt="be brief")
    with Expert.load(bundle) as auto, Expert.load(bundle, backend="onnx") as onnx:
        assert (auto.backend.name, onnx.backend.name) == ("gguf", "onnx")
        assert onnx.render([{"role": "user", "content": "x"}]).startswith("<|im_start|>system\nbe brief<|im_end|>")
        assert auto.complete("set a timer", max_tokens=8) == onnx.complete("set a timer", max_tokens=8)
    (bundle / "onnx" / "model.onnx").write_bytes(b"corrupt")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        Expert.load(bundle, backend="onnx")


def test_server_factory_serves_the_onnx_backend_and_refuses_json_constraints(onnx_expert):
    from fastapi.testclient import TestClient

    from runtime.server import ServerSettings, create_app

    app = create_app(ServerSettings(model="unused", model_id="tiny"), expert=onnx_expert)
    with TestClient(app) as http:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "call mom"}], "max_tokens": 8}
        reply = http.post("/v1/chat/completions", json=body).json()
        assert reply["choices"][0]["message"]["content"] == onnx_expert.chat(body["messages"], max_tokens=8)
        refused = http.post("/v1/chat/completions", json={**body, "response_format": {"type": "json_object"}})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "response_format"
        assert http.get("/health").json()["backend"] == "onnx"


def test_a_single_onnx_file_loads_with_the_tokenizer_beside_it(tiny_exports, onnx_expert):
    with Expert.load(tiny_exports["onnx"] / "model.onnx") as single:
        assert single.complete("set a timer for", max_tokens=6) == onnx_expert.complete("set a timer for", max_tokens=6)
