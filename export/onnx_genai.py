"""ONNX for onnxruntime-genai, made by its own model builder (int4 MatMulNBits, CPU or CUDA), and verified against
the merged model like every other artifact: tokenization, greedy tokens (fp32), next-token top-1, perplexity, KL."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from export.onnx_export import matmul_nbits
from kit.core.errors import UserError
from kit.core.files import atomic_output

# variant -> builder precision, extra options and the weight bits onnxruntime's MatMulNBits quantizer then gives
# the builder's MatMuls. int4-mixed keeps the layers k-quant finds sensitive (and the LM head) at 8 bits. The
# builder offers no int8 precision: int8 is its fp32 model with every MatMul at 8 bits (MatMulNBits, symmetric
# blocks of 32, int8 activations on CPU like the builder's int4); the embedding stays float (onnxruntime's
# GatherBlockQuantized takes 4 bits only).
VARIANTS: dict[str, tuple[str, list[str], int | None]] = {
    "int4": ("int4", ["int4_accuracy_level=4"], None),
    "int4-mixed": ("int4", ["int4_accuracy_level=4", "int4_algo_config=k_quant_mixed"], None),
    "int8": ("fp32", [], 8),
    "fp32": ("fp32", [], None),
}


def make_genai(merged: Path, out_dir: Path, variants: list[str], device: str = "cpu") -> dict[str, Path]:
    """One onnxruntime-genai model folder per variant (out_dir/genai-<variant>/: model.onnx, genai_config.json,
    tokenizer and chat template), built once; returns variant -> folder."""
    made = {}
    for variant in variants:
        precision, extra, bits = VARIANTS[variant]
        target = out_dir / f"genai-{variant}"
        if not (target / "genai_config.json").is_file():
            with atomic_output(target) as partial, tempfile.TemporaryDirectory(prefix="microkit-genai-") as cache:
                command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(merged), "-o",
                           str(partial), "-p", precision, "-e", device, "-c", cache,
                           *(["--extra_options", *extra] if extra else [])]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0 or not (partial / "genai_config.json").is_file():
                    tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-3:])
                    raise UserError(f"onnxruntime-genai's model builder failed on {merged} ({variant}):\n{tail}")
                if bits is not None:
                    quantize_matmuls(partial / _model_file(partial), bits)
        made[variant] = target
    return made


def _model_file(folder: Path) -> str:
    import json

    return json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["filename"]


def quantize_matmuls(model_file: Path, bits: int, block_size: int = 32) -> None:
    """Every MatMul of an onnxruntime-genai model at `bits` (weight-only MatMulNBits, symmetric blocks, accuracy
    level 4), in place; its weights go to one external data file beside it, as the builder writes them."""
    quantized = matmul_nbits(model_file, bits, block_size, accuracy_level=4)
    for old in model_file.parent.glob(model_file.name + "*"):  # the float model and its data (loaded above)
        old.unlink()
    quantized.save_model_to_file(str(model_file), use_external_data_format=True)
    for written in model_file.parent.glob(model_file.name + "*"):
        written.chmod(0o644)


class GenaiCausalLM:
    """Greedy tokens and per-position logits from an onnxruntime-genai model, for verification."""

    def __init__(self, folder: Path):
        import onnxruntime_genai as og

        self._og = og
        self.model = og.Model(str(folder))
        self.tokenizer = og.Tokenizer(self.model)

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def _generator(self, length: int):
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(max_length=length, do_sample=False)
        return self._og.Generator(self.model, params)

    def greedy(self, ids: list[int], count: int) -> list[int]:
        generator = self._generator(len(ids) + count)
        generator.append_tokens(ids)
        out: list[int] = []
        while len(out) < count and not generator.is_done():
            generator.generate_next_token()
            out.append(int(generator.get_next_tokens()[0]))
        return out

    def logits(self, ids: list[int]):
        """Logits after each token of `ids` (teacher-forced one token at a time), shape (len(ids), vocab)."""
        import numpy as np

        generator = self._generator(len(ids) + 1)
        rows = []
        for token in ids:
            generator.append_tokens([token])
            rows.append(np.asarray(generator.get_logits(), dtype=np.float64).reshape(-1))
        return np.stack(rows)
