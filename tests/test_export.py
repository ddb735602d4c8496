"""Export stage on the tiny random Llama: merge, GGUF, ONNX, verification, bundle, Modelfile, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from export.config import BundleInfo, ExportConfig, ExportStageConfig
from kit.core.run_dir import RunDir
from runtime.manifest import read_manifest, verify_files

PROMPT = "<|im_start|>user\nset a timer for 3 minutes<|im_end|>\n<|im_start|>assistant\n"


def make_adapter(base: Path, out: Path, seed: int = 0, scale: float = 0.05) -> Path:
    """A LoRA adapter on every linear layer whose B matrices are small random values (merged != base)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * scale
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_adapter(tiny_llama, tmp_path_factory) -> Path:
    return make_adapter(tiny_llama, tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.fixture(scope="module")
def tiny_export(tiny_llama, tiny_adapter, tmp_path_factory):
    from export.stage import run

    root = tmp_path_factory.mktemp("tiny-export")
    config = ExportConfig(gguf_types=["F16", "Q8_0", "Q4_K_M"], ship=["F16", "Q8_0"], gguf_pre_tokenizer="gpt-2",
                          onnx={"quantize": ["int8", "int4"], "ship": ["int8", "int4"]},
                          min_top1_agreement=0.0, max_perplexity_ratio=10.0, verify_tokens=16, threads=1)
    info = BundleInfo(name="tiny-timer", task="Set timers.", system_prompt="You set timers.")
    stage = run(ExportStageConfig(export=config, bundle=info, adapter=tiny_adapter, base=str(tiny_llama)), RunDir(root))
    return root, stage, config, info


def test_export_writes_a_bundle_whose_hashes_match_its_manifest(tiny_export):
    root, stage, _, _ = tiny_export
    bundle = root / "bundle"
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    paths = {f.path for f in manifest.files}
    assert {"model-F16.gguf", "model-Q8_0.gguf", "onnx/model_int8.onnx", "onnx/model_int4.onnx",
            "onnx/tokenizer.json", "Modelfile", "README.md"} <= paths
    assert "model-Q4_K_M.gguf" not in paths  # made and verified, but not shipped
    assert manifest.system_prompt == "You set timers." and "<|im_start|>" in manifest.chat_template
    assert manifest.verification["artifacts"]["model-F16.gguf"]["greedy_identical"] is True
    assert stage.figures["failed"] == []


def test_every_artifact_tokenizes_like_the_merged_model_and_unquantized_ones_decode_alike(tiny_export):
    root, *_ = tiny_export
    verify = json.loads((root / "export" / "verify.json").read_text())
    by_name = {a["name"]: a for a in verify["artifacts"]}
    assert set(by_name) == {"model-F16.gguf", "model-Q8_0.gguf", "model-Q4_K_M.gguf", "onnx/model.onnx",
                            "onnx/model_int8.onnx", "onnx/model_int4.onnx"}
    assert all(a["tokenization_identical"] for a in by_name.values())
    assert by_name["model-F16.gguf"]["greedy_identical"] and by_name["onnx/model.onnx"]["greedy_identical"]
    assert all(0.0 <= a["top1_agreement"] <= 1.0 and a["perplexity"] > 0 for a in by_name.values())


def test_merged_model_differs_from_the_base(tiny_export, tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM

    root, *_ = tiny_export
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(root / "export" / "merged").state_dict()
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(base[key], merged[key])


def test_shipped_gguf_generates_the_merged_models_greedy_tokens_in_llama_cpp(tiny_export):
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, *_ = tiny_export
    merged_dir = root / "export" / "merged"
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    model = AutoModelForCausalLM.from_pretrained(merged_dir)
    ids = tokenizer(PROMPT)["input_ids"]
    with torch.inference_mode():
        want = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, min_new_tokens=8)[0, len(ids):]
    llm = Llama(str(root / "bundle" / "model-F16.gguf"), n_ctx=128, verbose=False)
    assert llm.tokenize(PROMPT.encode(), add_bos=True, special=True) == ids
    have = []
    for token in llm.generate(ids, temp=0.0, top_k=1):
        have.append(token)
        if len(have) == 8:
            break
    assert have == want.tolist()


def test_shipped_onnx_runs_in_onnxruntime(tiny_export):
    import numpy as np

    from export.onnx_export import OnnxCausalLM

    root, *_ = tiny_export
    logits = OnnxCausalLM(root / "bundle" / "onnx" / "model_int8.onnx").logits([1, 5, 9, 12])
    assert logits.shape[0] == 4 and np.isfinite(logits).all()


def test_modelfile_points_at_the_gguf_and_speaks_the_chat_template(tiny_export):
    root, *_ = tiny_export
    text = (root / "bundle" / "Modelfile").read_text()
    assert text.startswith("FROM ./model-F16.gguf\n")
    assert '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n' in text
    assert text.split('"""')[1].endswith("<|im_start|>assistant\n")
    assert 'SYSTEM """You set timers."""' in text and 'PARAMETER stop "<|im_end|>"' in text


def test_modelfile_carries_a_templates_default_system_prompt(tiny_llama):
    from transformers import AutoTokenizer

    from export.modelfile import template_parts

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    parts = template_parts(tokenizer)
    assert parts.default_system == "Be brief." and parts.suffix == "<|im_end|>\n"
    assert parts.prefixes["assistant"] == "<|im_start|>assistant\n"


def test_an_artifact_that_fails_verification_is_not_shipped(tiny_llama, tiny_adapter, tmp_path):
    from export.stage import run

    config = ExportConfig(gguf_types=["F16", "Q4_0"], ship=["F16", "Q4_0"], gguf_pre_tokenizer="gpt-2",
                          onnx={"enabled": False}, min_top1_agreement=1.0, verify_tokens=4, threads=1)
    stage = run(ExportStageConfig(export=config, bundle=BundleInfo(name="strict"), adapter=tiny_adapter, base=str(tiny_llama)), RunDir(tmp_path))
    assert stage.figures["failed"] == ["model-Q4_0.gguf"]
    assert not (tmp_path / "bundle" / "model-Q4_0.gguf").exists()
    manifest = read_manifest(tmp_path / "bundle")
    assert manifest.verification["artifacts"]["model-Q4_0.gguf"]["status"] == "failed"
    assert [f.path for f in manifest.files if f.kind == "gguf"] == ["model-F16.gguf"]


def test_export_is_skipped_when_inputs_and_config_are_unchanged(tiny_export, tiny_llama, tiny_adapter):
    from export.stage import run

    root, stage, config, info = tiny_export
    again = run(ExportStageConfig(export=config, bundle=info, adapter=tiny_adapter, base=str(tiny_llama)), RunDir(root))
    assert again.finished == stage.finished


def test_a_gguf_llama_cpp_cannot_load_is_refused_and_the_caller_survives(tiny_export, tmp_path):
    from export.gguf import refuse_unusable
    from kit.core.errors import UserError

    root, *_ = tiny_export
    broken = tmp_path / "model-F16.gguf.partial"
    broken.write_bytes((root / "export" / "model-F16.gguf").read_bytes()[:4096])
    with pytest.raises(UserError, match="refused to write model-F16.gguf"):
        refuse_unusable(broken)
    assert not broken.exists()


def test_unrecognised_tokenizer_without_a_pre_tokenizer_is_a_user_error(tiny_llama, tmp_path):
    from export.gguf import convert_to_gguf
    from kit.core.errors import UserError

    with pytest.raises(UserError, match="gguf_pre_tokenizer"):
        convert_to_gguf(tiny_llama, tmp_path / "model-F16.gguf")
    assert not list(tmp_path.glob("*.gguf*"))


def test_kit_export_from_a_recipe_uses_the_run_directory(tiny_llama, tiny_adapter, tmp_path):
    import shutil

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "task: {name: tiny-cli, description: Set kitchen timers from plain requests.}\n"
        "seeds: [{input: set a timer for 3 minutes, output: '180'}]\n"
        f"student: {{model: {tiny_llama}}}\n"
        "export: {gguf_types: [F16], ship: [F16], gguf_pre_tokenizer: gpt-2, onnx: {enabled: false}, verify_tokens: 4}\n")
    runs = tmp_path / "runs"
    shutil.copytree(tiny_adapter, runs / "tiny-cli" / "train" / "adapter")
    done = subprocess.run([sys.executable, "-m", "kit", "export", str(recipe), "--runs", str(runs)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = read_manifest(runs / "tiny-cli" / "bundle")
    assert manifest.name == "tiny-cli" and manifest.system_prompt == "Set kitchen timers from plain requests."
    assert (runs / "tiny-cli" / "export" / "verify.json").is_file()


def test_kit_export_without_inputs_names_the_fix():
    done = subprocess.run([sys.executable, "-m", "kit", "export"], capture_output=True, text=True)
    assert done.returncode == 1 and "--base" in done.stderr


def test_validation_rows_join_the_verification_set(tiny_llama, tmp_path):
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    from export.verify import build_probe, validation_texts

    rows = [{"input": "set a timer for 2 minutes", "output": '{"seconds": 120}'},
            {"input": "call mom", "output": '{"tool": "call_contact"}'}]
    DatasetDict({"train": Dataset.from_list(rows), "validation": Dataset.from_list(rows)}).save_to_disk(tmp_path / "ds")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    texts = validation_texts(tmp_path / "ds", tokenizer, "You set timers.", limit=1)
    assert texts == ["<|im_start|>system\nYou set timers.<|im_end|>\n<|im_start|>user\nset a timer for 2 minutes"
                     "<|im_end|>\n<|im_start|>assistant\n{\"seconds\": 120}<|im_end|>\n"]
    probe = build_probe(tokenizer, "You set timers.", texts, verify_tokens=4)
    assert probe.texts[-1] == texts[0] and probe.score_ids[-1] == tokenizer(texts[0])["input_ids"]


@pytest.mark.parametrize("backend", ["gguf", "onnx"])
def test_the_runtime_serves_the_exported_bundle(tiny_export, backend):
    from runtime import Expert, GenerationStats

    root, *_ = tiny_export
    messages = [{"role": "user", "content": "set a timer for 3 minutes"}]
    stats = GenerationStats()
    with Expert.load(root / "bundle", backend=backend, n_ctx=256, n_threads=1) as expert:
        prompt = expert.render(messages)
        reply = "".join(expert.generate(prompt, expert.params(max_tokens=8), stats))
        assert expert.backend.name == backend and reply == expert.chat(messages, max_tokens=8)
    assert prompt.startswith("<|im_start|>system\nYou set timers.<|im_end|>\n")  # the bundle's system prompt
    # the random tiny model does not end its turn within 8 tokens (the GGUF backend counts the text's tokens again,
    # which for its non-canonical token runs can be fewer than it generated)
    assert stats.finish_reason == "length" and 0 < stats.completion_tokens <= 8
