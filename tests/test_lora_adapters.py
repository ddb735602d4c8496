"""Many experts on one base: `export.lora_adapter` ships the LoRA adapter as a GGUF (llama.cpp's own
convert_lora_to_gguf.py) with the unmerged base; `Expert.load_many` and `kit serve A B` load that base once and
decode each request with its expert's adapter, answering as each merged model does."""

from __future__ import annotations

import openai
import pytest

from export.config import BundleInfo, ExportConfig, ExportStageConfig
from kit.core.run_dir import RunDir
from runtime.manifest import read_manifest
from tests.conftest import serving
from tests.test_export import PROMPT, make_adapter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_experts(tiny_llama, tmp_path_factory):
    """Two bundles from two different adapters on the tiny Llama, each with its adapter GGUF and shared base."""
    from export.stage import run

    bundles = []
    for seed, name in ((1, "tiny-a"), (2, "tiny-b")):
        root = tmp_path_factory.mktemp(name)
        adapter = make_adapter(tiny_llama, root / "adapter", seed=seed, scale=0.2)
        # F32 throughout: the merged GGUF then decodes exactly as the merged model (the export's exact check)
        config = ExportConfig(gguf_types=["F32"], ship=["F32"], gguf_pre_tokenizer="gpt-2", onnx={"enabled": False},
                              lora_adapter=True, min_top1_agreement=0.0, max_perplexity_ratio=10.0, verify_tokens=12,
                              threads=1)
        run(ExportStageConfig(export=config, bundle=BundleInfo(name=name, task="Set timers."), adapter=adapter,
                              base=str(tiny_llama)), RunDir(root))
        bundles.append(root / "bundle")
    return bundles


def test_bundles_ship_a_small_adapter_beside_the_shared_base(two_experts):
    manifests = [read_manifest(b) for b in two_experts]
    for bundle, manifest in zip(two_experts, manifests):
        lora = manifest.lora_adapter
        assert (bundle / lora["adapter"]).is_file() and (bundle / lora["base"]).is_file()
        assert lora["adapter_bytes"] < lora["merged_bytes"] / 2
        assert lora["prompts"] > 0 and 0.0 <= lora["greedy_agreement"] <= 1.0
        kinds = {f.kind for f in manifest.files}
        assert {"gguf", "gguf-adapter", "gguf-base"} <= kinds
        modelfile = (bundle / "Modelfile.adapter").read_text()
        assert f"FROM ./{lora['base']}\nADAPTER ./{lora['adapter']}\n" in modelfile
    bases = [next(f for f in m.files if f.kind == "gguf-base") for m in manifests]
    assert bases[0].sha256 == bases[1].sha256  # one base file for every expert of this student


def test_load_many_shares_one_base_and_answers_as_each_merged_model(two_experts):
    from runtime.expert import Expert

    merged = []
    for bundle in two_experts:
        with Expert.load(bundle) as alone:
            merged.append(alone.complete(PROMPT, max_tokens=12))
    experts = Expert.load_many(two_experts, parallel=2)
    shared = experts[0].backend.shared
    try:
        assert experts[1].backend.shared is shared
        answers = [expert.complete(PROMPT, max_tokens=12) for expert in experts]
        assert answers == merged
        assert answers[0] != answers[1]  # each request decodes with its own expert's adapter
        together = experts[0].chat_many([[{"role": "user", "content": "set a timer"}]] * 2, max_tokens=8)
        assert len(together) == 2
    finally:
        for expert in experts:
            expert.close()
    assert shared.engine is None  # the shared base closed with its last expert


def test_one_server_routes_two_experts_by_model_name(two_experts, free_port):
    from runtime.expert import Expert
    from runtime.server import ServerSettings, create_app

    expected = {}
    for bundle in two_experts:
        with Expert.load(bundle) as alone:
            expected[alone.name] = alone.complete(PROMPT, max_tokens=10)
    settings = ServerSettings(model=str(two_experts[0]), more_models=(str(two_experts[1]),), port=free_port(),
                              parallel=2, n_ctx=512)
    app = create_app(settings)
    with serving(app, settings.port) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
        assert sorted(m.id for m in client.models.list().data) == sorted(expected)
        for name, answer in expected.items():
            reply = client.completions.create(model=name, prompt=PROMPT, max_tokens=10, temperature=0.0)
            assert reply.model == name and reply.choices[0].text == answer
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="tiny-c", prompt=PROMPT, max_tokens=4)
    for expert in app.state.experts.values():
        expert.close()
