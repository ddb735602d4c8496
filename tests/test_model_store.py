"""The offline model store: assembled from PyPI packages, verified by sha256, cached and reused."""

from __future__ import annotations

import dataclasses

import pytest

from kit.core.errors import UserError
from kit.models.reference import resolve_model
from kit.models.registry import REGISTRY
from kit.models.store import ModelStore, sha256_file

STUDENT = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def store() -> ModelStore:
    return ModelStore()


@pytest.mark.slow
def test_pull_assembles_a_gguf_whose_sha256_matches(store):
    path = store.pull(STUDENT)
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert sha256_file(path) == REGISTRY[STUDENT].sha256
    assert store.path(STUDENT) == path


@pytest.mark.slow
def test_second_pull_reuses_the_cached_file(store):
    path = store.pull(STUDENT)
    before = path.stat().st_mtime_ns
    assert store.pull(STUDENT) == path
    assert path.stat().st_mtime_ns == before


@pytest.mark.slow
def test_hash_mismatch_is_refused_and_the_bad_file_removed(tmp_path):
    wrong = dataclasses.replace(REGISTRY[STUDENT], sha256="0" * 64)
    store = ModelStore(root=tmp_path / "models", registry={STUDENT: wrong})
    with pytest.raises(UserError, match="sha256"):
        store.pull(STUDENT)
    assert not list((tmp_path / "models").glob("*.gguf*"))
    assert not store.is_pulled(STUDENT)


def test_path_of_a_model_not_pulled_names_the_pull_command(tmp_path):
    store = ModelStore(root=tmp_path / "models")
    with pytest.raises(UserError, match="kit models pull"):
        store.path(STUDENT)


def test_unknown_store_name_lists_known_names():
    with pytest.raises(UserError, match="smollm2-135m-instruct"):
        ModelStore().model("no-such-model")


@pytest.mark.slow
def test_hf_folder_of_a_store_model_loads_and_generates(store):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = store.pull_hf(STUDENT)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    out = model.generate(ids, attention_mask=ids.new_ones(ids.shape), max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0][ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
    assert store.pull_hf(STUDENT) == folder  # cached


def test_model_refs_resolve_paths_folders_and_hub_ids(tiny_llama, tmp_path):
    assert resolve_model(STUDENT).kind == "store"
    assert resolve_model(str(tiny_llama)).kind == "hf_dir"
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model(str(gguf)).kind == "gguf"
    with pytest.raises(UserError, match="unknown model"):
        resolve_model("not a model")


@pytest.mark.slow
def test_llama_cpp_converter_is_cached_from_the_pinned_source_release():
    from export.llama_cpp_source import converter_root

    root = converter_root()
    assert (root / "convert_hf_to_gguf.py").is_file()
    assert (root / "gguf-py" / "gguf" / "__init__.py").is_file()
    assert (root / "conversion").is_dir()


def test_a_gguf_vocabularys_unused_padding_tokens_stay_out_of_the_rebuilt_tokenizer(tmp_path):
    """Qwen's GGUFs pad the vocabulary to the embedding size with UNUSED [PADn] entries; the rebuilt tokenizer
    leaves them out, so llama.cpp's converter marks them UNUSED again and the exported tokenizer equals the source's."""
    import gguf

    from kit.models.gguf_tokenizer import tokenizer_from_gguf

    tokens = ["a", "b", "ab", "<|end|>", "[PAD4]", "[PAD5]"]
    types = [gguf.TokenType.NORMAL] * 3 + [gguf.TokenType.CONTROL] + [gguf.TokenType.UNUSED] * 2
    path = tmp_path / "vocab.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["a b"])
    writer.add_eos_token_id(3)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tokenizer = tokenizer_from_gguf(path)
    vocab = tokenizer.get_vocab()
    assert "[PAD4]" not in vocab and "[PAD5]" not in vocab
    assert vocab["ab"] == 2 and vocab["<|end|>"] == 3
    assert tokenizer("ab<|end|>")["input_ids"] == [2, 3]
