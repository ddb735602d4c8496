"""ONNX through onnxruntime-genai, the on-device ONNX runtime (a model-builder folder with genai_config.json):
its own KV cache and search, and JSON-schema output through its guidance (LLGuidance) like a GGUF's grammar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from runtime.backends.base import LoadOptions
from runtime.backends.tokenizer_files import read_json, tokenizer_side
from runtime.errors import ContextLengthError
from runtime.manifest import BundleError
from runtime.params import GenerationParams, GenerationStats
from runtime.sampling import StopStrings

GENAI_CONFIG = "genai_config.json"
ANY_JSON = {"type": "object"}  # json_object: any JSON object, as OpenAI's json_object mode asks


class GenaiBackend:
    name = "onnx-genai"
    parallel = 1
    constrains_json = True

    def __init__(self, model_path: Path, options: LoadOptions):
        try:
            import onnxruntime_genai as og
        except ImportError:
            raise BundleError("this ONNX expert needs onnxruntime-genai: pip install 'microkit[runtime]'") from None
        folder = model_path if model_path.is_dir() else model_path.parent
        if not (folder / GENAI_CONFIG).is_file():
            raise BundleError(f"{folder} has no {GENAI_CONFIG}: it was not made by onnxruntime-genai's model builder")
        self._og = og
        config = og.Config(str(folder))
        self.device = "cpu"
        if options.device == "gpu":
            config.clear_providers()
            config.append_provider("cuda")
            self.device = "gpu"
        try:
            self.model = og.Model(config)
        except Exception as err:  # noqa: BLE001 - onnxruntime-genai raises plain RuntimeErrors
            raise BundleError(f"onnxruntime-genai cannot load {folder} ({err})") from None
        self.tokenizer = og.Tokenizer(self.model)
        genai = read_json(folder / GENAI_CONFIG)
        self.n_ctx = min(options.n_ctx, int(genai.get("model", {}).get("context_length") or options.n_ctx))
        side = tokenizer_side(folder)
        self.bos_token, self.eos_token, self.chat_template = side.bos_token, side.eos_token, side.chat_template

    def tokenize(self, prompt: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(prompt)]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text)) if text else 0

    def _generator_params(self, prompt_tokens: int, params: GenerationParams):
        og = self._og
        search = {"max_length": min(self.n_ctx, prompt_tokens + params.max_tokens), "do_sample": params.temperature > 0}
        if params.temperature > 0:
            search |= {"temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k}
            if params.seed is not None:
                search["random_seed"] = int(params.seed) & 0x7FFFFFFF
        if params.repeat_penalty != 1.0:
            search["repetition_penalty"] = params.repeat_penalty
        generator_params = og.GeneratorParams(self.model)
        generator_params.set_search_options(**search)
        schema = params.json_schema if params.json_schema is not None else (ANY_JSON if params.json_object else None)
        if schema is not None:  # compact JSON, as llama.cpp's grammar writes it (no runs of whitespace to loop in)
            compact = {**schema, "x-guidance": {"whitespace_flexible": False, "key_separator": ":",
                                                "item_separator": ","}}
            generator_params.set_guidance("json_schema", json.dumps(compact))
        return generator_params

    def generate(self, prompt: str, params: GenerationParams, stats: GenerationStats) -> Iterator[str]:
        tokens = self.tokenize(prompt)
        if len(tokens) >= self.n_ctx:
            raise ContextLengthError(f"the prompt has {len(tokens)} tokens; this model's context holds {self.n_ctx}")
        stats.prompt_tokens = len(tokens)
        generator = self._og.Generator(self.model, self._generator_params(len(tokens), params))
        stream = self.tokenizer.create_stream()
        stops = StopStrings(params.stop)
        budget = min(params.max_tokens, self.n_ctx - len(tokens))
        stats.finish_reason = "length"
        try:
            generator.append_tokens(tokens)
            while stats.completion_tokens < budget:
                if generator.is_done():
                    stats.finish_reason = "stop"
                    break
                generator.generate_next_token()
                token = int(generator.get_next_tokens()[0])
                if generator.is_done() and self._is_eos(token):
                    stats.finish_reason = "stop"
                    break
                stats.completion_tokens += 1
                piece = stops.feed(stream.decode(token))
                if piece:
                    yield piece
                if stops.stopped:
                    stats.finish_reason = "stop"
                    return
            if tail := stops.flush():
                yield tail
        finally:
            del generator

    def _is_eos(self, token: int) -> bool:
        return bool(self.eos_token) and self.tokenizer.decode([token]) in ("", self.eos_token)

    def close(self) -> None:
        self.model = None
        self.tokenizer = None
