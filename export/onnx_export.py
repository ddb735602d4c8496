"""ONNX: optimum export (text-generation-with-past), onnxruntime int8 dynamic and int4 MatMulNBits quantization."""

from __future__ import annotations

import shutil
from pathlib import Path

from kit.core.errors import UserError

ONNX_FILES = {"fp32": "model.onnx", "int8": "model_int8.onnx", "int4": "model_int4.onnx"}
EXTERNAL_DATA_ABOVE = 1_800_000_000  # protobuf cannot hold a model over 2 GB in one file


def export_onnx(merged_dir: Path, out_dir: Path) -> Path:
    """Export the merged model with optimum into a clean folder (nothing an interrupted export left there is
    kept); tokenizer, chat template and config land beside it."""
    from optimum.exporters.onnx import main_export

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    main_export(str(merged_dir), output=str(out_dir), task="text-generation-with-past", device="cpu",
                do_validation=False, local_files_only=True)
    model = out_dir / ONNX_FILES["fp32"]
    if not model.is_file():
        raise UserError(f"optimum wrote no {model.name} into {out_dir}; see its log above")
    return model


def _model_bytes(model: Path) -> int:
    return sum(p.stat().st_size for p in model.parent.glob(f"{model.name}*"))


def quantize_int8(model: Path, keep_float: list[str] | tuple[str, ...] = ()) -> Path:
    """Dynamic int8 quantization of the MatMul weights (per channel); MatMuls named like keep_float stay float.

    Why keep some float: the MLP down projections see the activation outliers of small LLMs; quantizing
    their inputs per tensor doubled SmolLM2-135M's perplexity (ratio 2.0), keeping them float gives 1.08.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = onnx.load(str(model), load_external_data=False).graph.node
    exclude = [n.name for n in nodes if n.op_type == "MatMul" and any(k in n.name for k in keep_float)]
    out = model.with_name(ONNX_FILES["int8"])
    quantize_dynamic(model, out, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
                     nodes_to_exclude=exclude, use_external_data_format=_model_bytes(model) > EXTERNAL_DATA_ABOVE)
    return out


def matmul_nbits(model: Path, bits: int, block_size: int = 32, accuracy_level: int | None = None):
    """The model with every MatMul weight-only quantized to `bits` (onnxruntime's MatMulNBits, symmetric blocks;
    accuracy level 4: int8 activations on CPU); returns onnxruntime's model wrapper, for the caller to save."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(model)), bits=bits, block_size=block_size, is_symmetric=True,
                                     accuracy_level=accuracy_level, op_types_to_quantize=("MatMul",))
    quantizer.process()
    return quantizer.model


def quantize_int4(model: Path, block_size: int = 32) -> Path:
    """Weight-only int4 (onnxruntime MatMulNBits, symmetric blocks); activations stay float."""
    out = model.with_name(ONNX_FILES["int4"])
    quantized = matmul_nbits(model, 4, block_size)
    quantized.save_model_to_file(str(out), use_external_data_format=_model_bytes(model) > EXTERNAL_DATA_ABOVE * 4)
    return out


def make_onnx(merged_dir: Path, out_dir: Path, quants: list[str], int8_keep_float: list[str] = ()) -> dict[str, Path]:
    """fp32 ONNX plus each requested quantization, as out_dir/model*.onnx."""
    made = {"fp32": export_onnx(merged_dir, out_dir)}
    for quant in dict.fromkeys(quants):
        made[quant] = (quantize_int8(made["fp32"], int8_keep_float) if quant == "int8"
                       else quantize_int4(made["fp32"]))
    return made


class OnnxCausalLM:
    """Full-sequence logits from an optimum decoder export in plain onnxruntime (empty past, no cache)."""

    def __init__(self, model: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}

    def _feeds(self, ids: list[int], past: dict[str, "np.ndarray"] | None, past_length: int) -> dict:
        import numpy as np

        feeds = {"input_ids": np.asarray([ids], dtype=np.int64),
                 "attention_mask": np.ones((1, past_length + len(ids)), dtype=np.int64)}
        if "position_ids" in self.inputs:
            feeds["position_ids"] = np.arange(past_length, past_length + len(ids), dtype=np.int64)[None, :]
        for name, spec in self.inputs.items():
            if name.startswith("past_key_values"):
                if past is not None:
                    feeds[name] = past[name.replace("past_key_values", "present")]
                else:
                    dtype = np.float16 if "float16" in spec.type else np.float32
                    feeds[name] = np.zeros((1, spec.shape[1], 0, spec.shape[3]), dtype=dtype)
        return feeds

    def _run(self, ids: list[int], past: dict | None = None, past_length: int = 0):
        names = [o.name for o in self.session.get_outputs()]
        outputs = dict(zip(names, self.session.run(names, self._feeds(ids, past, past_length))))
        return outputs.pop("logits")[0], outputs

    def logits(self, ids: list[int]):
        """(len(ids), vocab) float32 logits for one sequence."""
        import numpy as np

        return self._run(ids)[0].astype(np.float32)

    def greedy(self, ids: list[int], n: int) -> list[int]:
        """n greedy tokens after ids, decoding with the exported KV cache."""
        logits, past = self._run(ids)
        out: list[int] = []
        for _ in range(n):
            out.append(int(logits[-1].argmax()))
            logits, past = self._run(out[-1:], past, len(ids) + len(out) - 1)
        return out
