"""Export on the model-store student (SmolLM2-135M-Instruct, from a GGUF) with a small trained adapter.

Repeats the known trap (GGUF -> transformers -> save_pretrained -> llama.cpp converter) and shows the
export carries the original tokenizer through instead.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from export.config import BundleInfo, ExportConfig, ExportStageConfig
from kit.core.run_dir import RunDir
from runtime.manifest import read_manifest, verify_files

pytestmark = pytest.mark.slow
STUDENT = "smollm2-135m-instruct"
SYSTEM = "You convert units. Answer with JSON."
TEXTS = ["Convert 3 miles to km: 4.83 km", "  {\"value\": 12, \"unit\": \"kg\"}\n\tdone", "Ünïcode 🚀 123456"]


@pytest.fixture(scope="module")
def student_hf() -> Path:
    from kit.models.store import ModelStore

    return ModelStore().pull_hf(STUDENT)


@pytest.fixture(scope="module")
def trained_adapter(student_hf, tmp_path_factory) -> Path:
    """Three AdamW steps of LoRA (all linear layers) on one example: a small but real trained adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(student_hf, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    ids = torch.tensor([[1, 4093, 198, 35, 8067, 281, 3593, 2, 198, 1, 520, 9531, 198, 33, 30, 29, 33, 2]])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    out = tmp_path_factory.mktemp("student-adapter") / "adapter"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def student_export(trained_adapter, tmp_path_factory):
    from export.stage import run

    root = tmp_path_factory.mktemp("student-export")
    config = ExportConfig(gguf_types=["F16", "Q8_0", "Q4_K_M"], ship=["F16", "Q4_K_M"],
                          onnx={"quantize": ["int8"], "ship": ["int8"]}, threads=1)
    info = BundleInfo(name="unit-converter", task="Convert units.", system_prompt=SYSTEM, output_format="json")
    dataset = _unit_dataset(root / "dataset")
    stage = run(ExportStageConfig(export=config, bundle=info, adapter=trained_adapter, base=STUDENT, dataset=dataset),
                RunDir(root))
    return root, stage


def _unit_dataset(out: Path) -> Path:
    """A small train / validation dataset in the distillation stage's row format: the importance matrix is
    computed on its training rows."""
    from datasets import Dataset, DatasetDict

    def row(number: int) -> dict:
        question, answer = f"Convert {number} miles to km", json.dumps({"value": round(number * 1.609, 2), "unit": "km"})
        return {"id": str(number), "input": question, "output": answer, "reasoning": "",
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question},
                             {"role": "assistant", "content": answer}]}

    DatasetDict({"train": Dataset.from_list([row(n) for n in range(1, 40)]),
                 "validation": Dataset.from_list([row(n) for n in range(40, 43)])}).save_to_disk(str(out))
    return out


def test_student_export_writes_a_verified_bundle_with_matching_hashes(student_export):
    root, stage = student_export
    manifest = read_manifest(root / "bundle")
    verify_files(root / "bundle", manifest)
    assert {"model-F16.gguf", "model-Q4_K_M.gguf", "onnx/model_int8.onnx", "Modelfile"} <= {f.path for f in manifest.files}
    assert manifest.base_model["license"] == "Apache-2.0"
    verify = json.loads((root / "export" / "verify.json").read_text())
    by_name = {a["name"]: a for a in verify["artifacts"]}
    assert all(a["status"] == "ok" and a["tokenization_identical"] for a in by_name.values()), by_name
    assert by_name["model-F16.gguf"]["greedy_identical"] and by_name["onnx/model.onnx"]["greedy_identical"]
    assert by_name["model-Q8_0.gguf"]["perplexity_ratio"] < by_name["model-Q4_K_M.gguf"]["perplexity_ratio"]
    # every artifact's next-token distribution against the merged model's: F16 all but equal, fewer bits further off
    # Q4_K_M was quantized with an importance matrix from the training rows (llama.cpp's tools, built by setup)
    assert (root / "export" / "imatrix.gguf").stat().st_size > 0 and stage.figures["imatrix_rows"] == 39
    kl = {name: a["kl_divergence"] for name, a in by_name.items()}
    assert all(value is not None and value >= 0 for value in kl.values()), kl
    assert kl["model-F16.gguf"] < 0.01 and kl["model-F16.gguf"] < kl["model-Q8_0.gguf"] < kl["model-Q4_K_M.gguf"]


def test_bundle_ggufs_generate_in_llama_cpp_and_f16_matches_the_merged_model(student_export):
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, _ = student_export
    merged = root / "export" / "merged"
    tokenizer = AutoTokenizer.from_pretrained(merged)
    prompt = tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM},
                                            {"role": "user", "content": "5 miles in km?"}],
                                           tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    with torch.inference_mode():
        want = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids):].tolist()
    for name in ("model-F16.gguf", "model-Q4_K_M.gguf"):
        llm = Llama(str(root / "bundle" / name), n_ctx=256, verbose=False)
        assert llm.tokenize(prompt.encode(), add_bos=True, special=True) == ids
        out = llm.create_completion(prompt, max_tokens=32, temperature=0.0)
        assert out["choices"][0]["text"].strip()
        if name == "model-F16.gguf":
            have = []
            for token in llm.generate(ids, temp=0.0, top_k=1):
                have.append(token)
                if len(have) == len(want) or token == tokenizer.eos_token_id:
                    break
            assert have == want


def test_bundle_onnx_runs_in_onnxruntime(student_export):
    import numpy as np
    from tokenizers import Tokenizer

    from export.onnx_export import OnnxCausalLM

    root, _ = student_export
    onnx_dir = root / "bundle" / "onnx"
    ids = Tokenizer.from_file(str(onnx_dir / "tokenizer.json")).encode("3 miles in km").ids
    logits = OnnxCausalLM(onnx_dir / "model_int8.onnx").logits(ids)
    assert logits.shape == (len(ids), 49152) and np.isfinite(logits).all()


def test_known_trap_naive_gguf_is_refused_and_the_export_keeps_the_original_tokenizer(
        student_hf, student_export, tmp_path):
    # The naive route: the transformers round trip of the GGUF (tokenizer loaded with gguf_file=), saved
    # and converted as it is. Its tokenizer.model is not a sentencepiece model (the converter cannot parse it) ...
    from transformers import AutoTokenizer

    from export.gguf import check_loads_and_tokenizes, convert_to_gguf, probe_gguf
    from kit.core.errors import UserError
    from kit.models.gguf_tokenizer import tokenizer_differences
    from kit.models.store import ModelStore

    naive = tmp_path / "naive"
    shutil.copytree(student_hf, naive)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"):
        (naive / name).unlink(missing_ok=True)
    gguf = ModelStore().path(STUDENT)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(naive)
    with pytest.raises(UserError, match="converter failed"):
        convert_to_gguf(naive, tmp_path / "naive.gguf")
    # ... and without it the converter writes a sentencepiece-style vocabulary with no merges, which
    # llama.cpp cannot tokenize: the child-process check refuses it, and this process lives on.
    (naive / "tokenizer.model").unlink()
    with pytest.raises(UserError, match="refused to write naive.gguf: llama.cpp was killed by SIGABRT"):
        convert_to_gguf(naive, tmp_path / "naive.gguf")
    assert not list(tmp_path.glob("naive.gguf*"))

    root, _ = student_export
    source = ModelStore().path(STUDENT)
    exported = root / "export" / "model-F16.gguf"
    assert check_loads_and_tokenizes(exported) is None
    assert tokenizer_differences(source, exported) == []
    original = probe_gguf(source, {"tokenize": TEXTS})
    ours = probe_gguf(exported, {"tokenize": TEXTS})
    assert original.ok and ours.ok and ours.result["tokens"] == original.result["tokens"]


def test_q5_k_fallback_for_rows_of_576_is_q5_0_not_q5_1(student_export, tmp_path):
    """SmolLM2-135M's rows are 576 wide, not a multiple of the k-quants' 256: llama.cpp gives such tensors Q5_1
    under Q5_K_M, which loses a small fine-tune with an importance matrix; the export gives them Q5_0 and keeps
    every other choice of llama.cpp's mixture. Q5_1 asked for by name stays Q5_1."""
    from collections import Counter

    from export.gguf import quantize_with_imatrix, tensor_types

    root, _ = student_export
    f16, imatrix = root / "export" / "model-F16.gguf", root / "export" / "imatrix.gguf"
    mixture = tensor_types(quantize_with_imatrix(f16, tmp_path / "q5km.gguf", "Q5_K_M", imatrix, threads=1))
    kinds = Counter(mixture.values())
    assert "Q5_1" not in kinds and kinds["Q5_0"] > 100 and kinds["Q5_K"] + kinds["Q6_K"] == 30, kinds
    assert mixture["blk.0.ffn_down.weight"] in ("Q5_K", "Q6_K") and mixture["token_embd.weight"] == "Q8_0"
    named = tensor_types(quantize_with_imatrix(f16, tmp_path / "q51.gguf", "Q5_1", imatrix, threads=1))
    assert Counter(named.values())["Q5_1"] > 100
