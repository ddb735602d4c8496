"""ONNX on onnxruntime-genai: the export stage builds the model with onnxruntime-genai's own model builder,
verifies it against the merged model, ships it; the runtime generates with it and holds JSON to the schema
through its guidance, like a GGUF's grammar."""

from __future__ import annotations

import json

import jsonschema
import pytest

from export.config import BundleInfo, ExportConfig, ExportStageConfig
from kit.core.run_dir import RunDir
from runtime.manifest import read_manifest
from tests.test_export import PROMPT, make_adapter

pytestmark = pytest.mark.slow
SCHEMA = {"type": "object", "properties": {"minutes": {"enum": [1, 3, 5, 10]}, "label": {"type": "string", "maxLength": 8}},
          "required": ["minutes", "label"], "additionalProperties": False}


@pytest.fixture(scope="module")
def genai_export(tiny_llama, tmp_path_factory):
    from export.stage import run

    root = tmp_path_factory.mktemp("genai-export")
    tiny_adapter = make_adapter(tiny_llama, root / "adapter")
    config = ExportConfig(gguf_types=["F16"], ship=["F16"], gguf_pre_tokenizer="gpt-2",
                          onnx={"quantize": [], "ship": ["fp32"], "genai": ["fp32", "int4", "int8"], "genai_ship": ["int4"]},
                          min_top1_agreement=0.0, max_perplexity_ratio=10.0, verify_tokens=12, threads=1)
    info = BundleInfo(name="tiny-genai", task="Set timers.", output_format="json", output_schema=SCHEMA)
    stage = run(ExportStageConfig(export=config, bundle=info, adapter=tiny_adapter, base=str(tiny_llama)), RunDir(root))
    return root, stage


def test_builder_models_are_verified_and_the_int4_one_ships(genai_export):
    root, stage = genai_export
    verify = json.loads((root / "export" / "verify.json").read_text())
    genai = {a["quant"]: a for a in verify["artifacts"] if a["kind"] == "onnx-genai"}
    assert set(genai) == {"fp32", "int4", "int8"}
    assert genai["fp32"]["tokenization_identical"] and genai["fp32"]["greedy_identical"]
    assert genai["fp32"]["perplexity_ratio"] == pytest.approx(1.0, abs=0.01)
    assert genai["int4"]["top1_agreement"] is not None and genai["int4"]["kl_divergence"] is not None
    # int8: the builder's fp32 model with every MatMul at 8 bits, closer to the merged model than int4
    assert genai["int8"]["tokenization_identical"]
    assert genai["int8"]["kl_divergence"] < genai["int4"]["kl_divergence"]
    assert genai["int8"]["perplexity_ratio"] == pytest.approx(1.0, abs=0.05)
    int8 = root / "export" / "genai-int8"
    assert json.loads((int8 / "genai_config.json").read_text())["model"]["decoder"]["filename"] == "model.onnx"
    assert {p.name for p in int8.glob("model.onnx*")} == {"model.onnx", "model.onnx.data"}
    manifest = read_manifest(root / "bundle")
    assert [f.path for f in manifest.files if f.kind == "onnx-genai"] == ["genai-int4/model.onnx"]
    assert (root / "bundle" / "genai-int4" / "genai_config.json").is_file()


def test_runtime_generates_with_onnxruntime_genai_and_holds_the_schema(genai_export):
    from runtime.expert import Expert
    from runtime.params import GenerationStats

    root, _ = genai_export
    with Expert.load(root / "bundle", backend="onnx-genai") as expert:
        assert expert.backend.name == "onnx-genai" and expert.backend.constrains_json
        for request in ("set a timer for 3 minutes", "tea", "call mom and then a timer"):
            answer = expert.run(request, max_tokens=96)  # parsed and validated against the schema
            jsonschema.validate(answer, SCHEMA)
        stats = GenerationStats()
        text = "".join(expert.generate(PROMPT, expert.params(max_tokens=3), stats))
        assert text and stats.finish_reason == "length" and stats.completion_tokens == 3
    with Expert.load(root / "export" / "genai-fp32") as bare:  # a bare builder folder loads as onnx-genai
        assert bare.backend.name == "onnx-genai"
        assert bare.complete(PROMPT, max_tokens=6, stop=["zzz"])
    with Expert.load(root / "export" / "genai-int8") as int8:  # 8-bit MatMulNBits runs in onnxruntime-genai
        assert int8.backend.name == "onnx-genai"
        assert int8.complete(PROMPT, max_tokens=6, stop=["zzz"])


def test_guidance_holds_derived_values_to_the_requests_own_forms(genai_export):
    """A bundle's derived numbers and clock times reach onnxruntime-genai's guidance as an anyOf of the request's
    own expressions / times and the schema's type; whichever the model takes, the app gets the schema's form."""
    from runtime.answer_rules import AnswerRules
    from runtime.expert import Expert

    root, _ = genai_export
    schema = {"type": "object", "properties": {"seconds": {"type": "integer", "minimum": 1},
                                               "time": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"}},
              "required": ["seconds", "time"], "additionalProperties": False}
    with Expert.load(root / "bundle", backend="onnx-genai") as expert:
        expert.manifest.output_schema = schema
        expert.rules = AnswerRules(derived_numbers={"seconds": [60, 1]}, clock_fields=("time",))
        offered = expert.request_schema("timer 3 minutes at 6pm")["properties"]
        assert offered["seconds"]["anyOf"][0]["enum"] == ["3 * 60", "3"]
        assert offered["time"]["anyOf"][0]["enum"] == ["6pm"]
        for request in ("timer 3 minutes at 6pm", "at 10:45 pm a 2 minute timer"):
            jsonschema.validate(expert.run(request, max_tokens=96), schema)
