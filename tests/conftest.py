"""Shared fixtures: a tiny random Llama with a real (locally trained) BPE tokenizer (no hub needed), the
model-store SmolLM2 GGUF and a task bundle on it, tiny ONNX and GGUF exports, free loopback ports."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from export.llama_cpp_source import converter_root
from kit.models.store import ModelStore
from runtime.manifest import GenerationDefaults, Manifest, describe_file, write_manifest

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus(lines: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ("set a timer for minutes call mom send message weather in paris tomorrow select name from users "
             "where id order by count json tool arguments city the a of to and is what how many rows table").split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 16))) + " {\"x\": 12}" for _ in range(lines)]


def build_tiny_llama(out: Path) -> Path:
    """Train a byte-level BPE tokenizer and save a random 2-layer Llama that uses it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


# -- the model-store SmolLM2 GGUF and task bundles built on it ------------------------------------------------
STORE_MODEL = "smollm2-135m-instruct"
PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def _write_bundle(folder: Path, files: list[tuple[Path, str, str | None]], **fields) -> Path:
    """A bundle folder: each (source, kind, quant) is linked in under its own name; manifest written with hashes."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for source, kind, quant in files:
        target = folder / source.name
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
            entries += [describe_file(folder, p, "onnx" if p.suffix == ".onnx" else "other")
                        for p in sorted(target.iterdir()) if p.is_file()]
            continue
        if not target.exists():
            os.symlink(source, target)
        entries.append(describe_file(folder, target, kind, quant))
    entries.sort(key=lambda e: e.kind != "onnx")  # the model file first among its kind is what loads
    write_manifest(folder, Manifest(files=entries, microkit_version="test", **fields))
    return folder


@pytest.fixture(scope="session")
def write_bundle():
    """write_bundle(folder, [(source, kind, quant), ...], **manifest fields) -> the bundle folder."""
    return _write_bundle


@pytest.fixture(scope="session")
def free_port():
    """free_port() -> a loopback port nothing listens on (each call binds afresh, so two servers get two)."""
    def pick() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    return pick


@pytest.fixture(scope="session")
def person_schema() -> dict:
    """The output schema of `task_bundle`."""
    return PERSON_SCHEMA


@pytest.fixture(scope="session")
def store_gguf() -> Path:
    return ModelStore().pull(STORE_MODEL)


@pytest.fixture(scope="session")
def task_bundle(store_gguf, tmp_path_factory) -> Path:
    """The store SmolLM2 GGUF as a JSON task expert: system prompt, output schema, greedy defaults."""
    return _write_bundle(
        tmp_path_factory.mktemp("bundles") / "person-extractor", [(store_gguf, "gguf", "Q4_1")],
        name="person-extractor", task="Extract the person from a sentence as JSON.",
        system_prompt="Extract the person mentioned by the user as JSON with their name and age.",
        output_format="json", output_schema=PERSON_SCHEMA,
        generation=GenerationDefaults(max_tokens=48, temperature=0.0))


# -- the tiny Llama, trained a little, as fp32 ONNX and F32 GGUF -----------------------------------------------
TRAINING_TEXT = "set a timer for ten minutes then call mom and send a message about the weather in paris tomorrow. "


def _train_tiny(source: Path, out: Path) -> Path:
    """A few optimizer steps on one repeated sentence, so that greedy decoding has decisive argmaxes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    ids = tokenizer(TRAINING_TEXT * 6, return_tensors="pt").input_ids[:, :256]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(80):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def _convert_to_gguf(model_dir: Path, outfile: Path, outtype: str) -> Path:
    """llama.cpp's own converter; our tiny tokenizer's pre-tokenizer hash is unknown to it, so name it gpt-2."""
    root = converter_root()
    shim = ("import runpy, sys; root = sys.argv.pop(1); sys.path[:0] = [root, root + '/gguf-py']; "
            "import conversion.base as base; base.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'gpt-2'; "
            "sys.argv[0] = root + '/convert_hf_to_gguf.py'; runpy.run_path(sys.argv[0], run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", shim, str(root), str(model_dir), "--outfile", str(outfile),
                             "--outtype", outtype], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return outfile


@pytest.fixture(scope="session")
def tiny_exports(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    """The same trained tiny Llama as an fp32 ONNX folder (optimum) and an F32 GGUF (llama.cpp)."""
    from optimum.exporters.onnx import main_export

    root = tmp_path_factory.mktemp("tiny-exports")
    trained = _train_tiny(tiny_llama, root / "hf")
    main_export(str(trained), str(root / "onnx"), task="text-generation-with-past")
    gguf = _convert_to_gguf(trained, root / "model-F32.gguf", "f32")
    return {"hf": trained, "onnx": root / "onnx", "gguf": gguf}


@contextmanager
def serving(app, port: int):
    """`app` served by uvicorn in a thread on 127.0.0.1:`port` for the block; yields its URL once /health answers."""
    import threading
    import time

    import httpx
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
