"""Fixtures shared by the runtime and server tests: bundles built here with runtime.manifest, tiny exports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.manifest import GenerationDefaults, Manifest, describe_file, write_manifest

STORE_MODEL = "smollm2-135m-instruct"
PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
TRAINING_TEXT = "set a timer for ten minutes then call mom and send a message about the weather in paris tomorrow. "


def write_bundle(folder: Path, files: list[tuple[Path, str, str | None]], **fields) -> Path:
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def store_gguf() -> Path:
    from kit.models.store import ModelStore

    return ModelStore().pull(STORE_MODEL)


@pytest.fixture(scope="session")
def task_bundle(store_gguf, tmp_path_factory) -> Path:
    """The store SmolLM2 GGUF as a JSON task expert: system prompt, output schema, greedy defaults."""
    return write_bundle(
        tmp_path_factory.mktemp("bundles") / "person-extractor", [(store_gguf, "gguf", "Q4_1")],
        name="person-extractor", task="Extract the person from a sentence as JSON.",
        system_prompt="Extract the person mentioned by the user as JSON with their name and age.",
        output_format="json", output_schema=PERSON_SCHEMA,
        generation=GenerationDefaults(max_tokens=48, temperature=0.0))


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


def convert_to_gguf(model_dir: Path, outfile: Path, outtype: str) -> Path:
    """llama.cpp's own converter; our tiny tokenizer's pre-tokenizer hash is unknown to it, so name it gpt-2."""
    from export.llama_cpp_source import converter_root

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
    gguf = convert_to_gguf(trained, root / "model-F32.gguf", "f32")
    return {"hf": trained, "onnx": root / "onnx", "gguf": gguf}
