"""ONNX (optimum's text-generation-with-past export) through onnxruntime, with the KV cache kept in numpy."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from runtime.backends.base import LoadOptions
from runtime.backends.tokenizer_files import read_json, tokenizer_side
from runtime.errors import ContextLengthError
from runtime.manifest import BundleError
from runtime.params import GenerationParams, GenerationStats
from runtime.sampling import StopStrings, next_token

PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _ids(value: Any) -> set[int]:
    if value is None:
        return set()
    return {int(v) for v in value} if isinstance(value, list) else {int(value)}


class ONNXBackend:
    name = "onnx"
    parallel = 1
    constrains_json = False  # no grammar sampler here: run() still validates, the server refuses response_format

    def __init__(self, model_path: Path, options: LoadOptions):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = model_path.parent
        if not (folder / "tokenizer.json").is_file():
            raise BundleError(f"{folder} has no tokenizer.json beside {model_path.name}; re-export the ONNX model")
        self.session = ort.InferenceSession(str(model_path), self._session_options(ort, options),
                                            providers=self._providers(ort, options.device))
        self.device = "gpu" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.n_ctx = options.n_ctx
        self._read_inputs()
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        side = tokenizer_side(folder)
        self.bos_token, self.eos_token, self.chat_template = side.bos_token, side.eos_token, side.chat_template
        eos_id = self.tokenizer.token_to_id(self.eos_token) if self.eos_token else None
        self.eos_ids = (_ids(read_json(folder / "generation_config.json").get("eos_token_id"))
                        | _ids(read_json(folder / "config.json").get("eos_token_id")) | _ids(eos_id))

    @staticmethod
    def _session_options(ort, options: LoadOptions):
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.intra_op_num_threads = options.n_threads or 0
        session_options.inter_op_num_threads = 1
        return session_options

    @staticmethod
    def _providers(ort, device: str) -> list[str]:
        cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        if device == "gpu" and not cuda:
            raise BundleError("device='gpu' but onnxruntime has no CUDAExecutionProvider: "
                              "install onnxruntime-gpu, or pass device='cpu'")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda and device != "cpu" else ["CPUExecutionProvider"]

    def _read_inputs(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        if "input_ids" not in inputs or "logits" not in {o.name for o in self.session.get_outputs()}:
            raise BundleError("the ONNX model has no input_ids input or logits output: export it with optimum, "
                              "task text-generation-with-past")
        unknown = set(inputs) - {"input_ids", "attention_mask", "position_ids"} - {n for n in inputs if n.startswith(PAST_PREFIX)}
        if unknown:
            raise BundleError(f"the ONNX model has inputs this runtime does not feed ({', '.join(sorted(unknown))}); "
                              "export it with optimum, task text-generation-with-past, without a merged decoder")
        self.past_inputs = {n: i for n, i in inputs.items() if n.startswith(PAST_PREFIX)}
        if not self.past_inputs:
            raise BundleError("the ONNX model has no KV-cache inputs: export it with task text-generation-with-past")
        self.feeds_attention_mask = "attention_mask" in inputs
        self.feeds_position_ids = "position_ids" in inputs

    def _empty_past(self) -> dict[str, np.ndarray]:
        past = {}
        for name, node in self.past_inputs.items():
            _, heads, _, head_dim = node.shape  # [batch, kv_heads, past_len, head_dim]
            past[name] = np.zeros((1, heads, 0, head_dim), dtype=ORT_DTYPES.get(node.type, np.float32))
        return past

    def tokenize(self, prompt: str) -> list[int]:
        add_special = not (self.bos_token and prompt.startswith(self.bos_token))
        return self.tokenizer.encode(prompt, add_special_tokens=add_special).ids

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids) if text else 0

    def _step(self, token_ids: list[int], past: dict[str, np.ndarray], start: int):
        """Run the model over `token_ids` at positions start..; return the last logits and the new cache."""
        feed = dict(past)
        feed["input_ids"] = np.asarray([token_ids], dtype=np.int64)
        end = start + len(token_ids)
        if self.feeds_attention_mask:
            feed["attention_mask"] = np.ones((1, end), dtype=np.int64)
        if self.feeds_position_ids:
            feed["position_ids"] = np.arange(start, end, dtype=np.int64)[None, :]
        outputs = self.session.run(None, feed)
        named = dict(zip(self._output_names, outputs))
        new_past = {PAST_PREFIX + n[len(PRESENT_PREFIX):]: v for n, v in named.items() if n.startswith(PRESENT_PREFIX)}
        return named["logits"][0, -1], new_past

    @property
    def _output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def generate(self, prompt: str, params: GenerationParams, stats: GenerationStats) -> Iterator[str]:
        from tokenizers.decoders import DecodeStream

        if params.json_schema is not None or params.json_object:
            raise ValueError("the ONNX backend cannot constrain output to JSON; use the GGUF backend for that")
        ids = self.tokenize(prompt)
        if len(ids) >= self.n_ctx:
            raise ContextLengthError(f"the prompt has {len(ids)} tokens; this model's context holds {self.n_ctx}")
        stats.prompt_tokens = len(ids)
        budget = min(params.max_tokens, self.n_ctx - len(ids))
        rng = np.random.default_rng(params.seed)
        decoder = DecodeStream(skip_special_tokens=True)
        stops = StopStrings(params.stop)
        history = list(ids)
        logits, past = self._step(ids, self._empty_past(), 0)
        stats.finish_reason = "length"
        for _ in range(budget):
            token = next_token(logits, history, params, rng)
            if token in self.eos_ids:
                stats.finish_reason = "stop"
                break
            history.append(token)
            stats.completion_tokens += 1
            piece = stops.feed(decoder.step(self.tokenizer, token) or "")
            if piece:
                yield piece
            if stops.stopped:
                stats.finish_reason = "stop"
                return
            if stats.completion_tokens == budget:
                break
            logits, past = self._step([token], past, len(history) - 1)
        if tail := stops.flush():
            yield tail

    def close(self) -> None:
        self.session = None
