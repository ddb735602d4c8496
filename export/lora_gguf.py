"""A LoRA adapter as a llama.cpp GGUF (llama.cpp's own convert_lora_to_gguf.py) beside the unmerged base it applies
to, so that several experts trained on one student share one base model: in memory when one server loads them
(`kit serve A B`), on disk when their bundles hard-link the same cached base file."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from export.gguf import CONVERTER_OUTTYPES, convert_to_gguf, quantize_gguf
from export.llama_cpp_source import converter_root
from kit.core import settings
from kit.core.errors import UserError
from kit.core.files import atomic_output
from kit.models.base_model import BaseModel


def adapter_type(base_quant: str) -> str:
    """F32 beside an F32 base (the pair then decodes as the merged F32 model does), else F16."""
    return "F32" if base_quant == "F32" else "F16"


def base_gguf(base: BaseModel, quant: str, pre_tokenizer: str | None = None, threads: int | None = None) -> Path:
    """The student's own base as a GGUF at `quant`, made once into microkit's cache (bases/): no importance
    matrix, so every task trained on this base gets the very same file."""
    out = settings.microkit_home() / "bases" / f"{base.name}-{base.sha256[:16]}-{quant}.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if quant in CONVERTER_OUTTYPES:  # float types come straight from the converter
        return convert_to_gguf(Path(base.hf_path), out, quant, pre_tokenizer, base.source_gguf)
    with tempfile.TemporaryDirectory(prefix="microkit-base-", dir=out.parent) as tmp:
        f16 = convert_to_gguf(Path(base.hf_path), Path(tmp) / "base-F16.gguf", "F16", pre_tokenizer, base.source_gguf)
        quantize_gguf(f16, out, quant, threads)
    return out


def adapter_gguf(adapter: Path, base: BaseModel, folder: Path, base_quant: str) -> Path:
    """The peft adapter converted by llama.cpp's convert_lora_to_gguf.py into folder/adapter-<type>.gguf (type:
    `adapter_type(base_quant)`), for llama.cpp to apply at run time."""
    root = converter_root()
    kind = adapter_type(base_quant)
    out = (Path(folder) / f"adapter-{kind}.gguf").resolve()  # the converter runs in its own folder: absolute paths
    with atomic_output(out) as partial:
        base_path = Path(base.hf_path).resolve() if Path(base.hf_path).exists() else base.hf_path
        command = [sys.executable, str(root / "convert_lora_to_gguf.py"), "--base", str(base_path),
                   "--outfile", str(partial), "--outtype", kind.lower(), str(Path(adapter).resolve())]
        done = subprocess.run(command, capture_output=True, text=True, cwd=root)
        if done.returncode != 0 or not partial.is_file():
            tail = "\n".join(done.stderr.strip().splitlines()[-3:])
            raise UserError(f"llama.cpp's LoRA converter failed on {adapter}:\n{tail}")
    return out


def adapter_agreement(base: Path, adapter: Path, merged: Path, prompts: list[str], max_tokens: int,
                      threads: int | None = None) -> dict:
    """Greedy answers of base + adapter (llama.cpp applying the LoRA) against the merged GGUF of the same
    quantization, prompt by prompt: the check that an adapter-served expert answers as its merged model does."""
    from runtime.backends.base import default_threads
    from runtime.backends.batch_engine import BatchEngine
    from runtime.params import GenerationParams

    params = GenerationParams(max_tokens=max_tokens, temperature=0.0)

    def answers(model: Path, lora: Path | None) -> list[str]:
        engine = BatchEngine(str(model), parallel=1, n_ctx=1024, n_threads=threads or default_threads(),
                             require_chat_template=False, reuse_prefix=False)
        try:
            if lora is not None:
                engine.load_adapter("expert", str(lora))
            return ["".join(engine.submit_tokens(engine.llama.tokenize(p.encode(), add_bos=False, special=True)[:900],
                                                 params, adapter="expert" if lora else None)) for p in prompts]
        finally:
            engine.close()

    with_adapter, merged_answers = answers(base, adapter), answers(merged, None)
    same = sum(a == b for a, b in zip(with_adapter, merged_answers))
    return {"prompts": len(prompts), "identical": same, "greedy_agreement": round(same / max(1, len(prompts)), 4),
            "max_tokens": max_tokens}


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link when both are on one filesystem (bundles then share the base's bytes), else a copy."""
    try:
        target.hardlink_to(source)
    except OSError:
        shutil.copy2(source, target)
