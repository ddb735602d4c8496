"""`Expert`: a loaded bundle with chat / stream / complete / run, safe to share between threads."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterator

from runtime.answer_rules import AnswerRules
from runtime.backends import Backend, LoadOptions, open_backend
from runtime.bundle import resolve_bundle
from runtime.chat_template import render_chat
from runtime.errors import BundleError, OutputError
from runtime.manifest import Manifest
from runtime.params import GenerationParams, GenerationStats

Message = dict[str, Any]


class Expert:
    """One loaded model, safe to share between threads. With `parallel` 1 calls run one after another; with
    `parallel` N (GGUF) up to N calls from different threads decode together, and `run_many` / `chat_many`
    answer a batch that way."""

    def __init__(self, backend: Backend, manifest: Manifest, path: Path):
        self.backend = backend
        self.manifest = manifest
        self.path = path
        self.defaults = GenerationParams.from_defaults(manifest.generation)
        self.chat_template = manifest.chat_template or backend.chat_template
        self.rules = AnswerRules.of(manifest)  # how a task answer is decoded and finished
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path, backend: str = "auto", device: str = "auto", *, n_ctx: int = 2048,
             n_threads: int | None = None, verify: bool = True, parallel: int = 1) -> "Expert":
        """Load a bundle folder, a bare .gguf or a bare ONNX folder.

        backend: auto (GGUF if the bundle has one, else onnxruntime-genai ONNX, else plain ONNX) | gguf | onnx-genai
            | onnx.
        device: auto (GPU when the build / execution provider supports it) | cpu | gpu.
        n_ctx: context tokens per request (prompt + answer).
        verify: check the manifest's sha256 of every bundle file first.
        parallel: requests decoded together (GGUF; ONNX runs one at a time), like llama-server's --parallel.
        """
        if device not in ("auto", "cpu", "gpu"):
            raise BundleError(f"unknown device {device!r}; use auto, cpu or gpu")
        if parallel < 1:
            raise BundleError(f"parallel must be at least 1, not {parallel}")
        bundle = resolve_bundle(path, verify=verify)
        name = backend if backend != "auto" else (
            "gguf" if bundle.gguf is not None else "onnx-genai" if bundle.onnx_genai is not None else "onnx")
        model = bundle.model_for(name)
        return cls(open_backend(name, model, LoadOptions(device, n_ctx, n_threads, parallel)), bundle.manifest,
                   Path(path))

    @classmethod
    def load_many(cls, paths: list[str | Path], backend: str = "auto", device: str = "auto", *, n_ctx: int = 2048,
                  n_threads: int | None = None, verify: bool = True, parallel: int = 1) -> list["Expert"]:
        """Load several experts; those whose bundles ship a LoRA adapter on the same base GGUF (`export.lora_adapter`)
        share one loaded base and one batch engine of `parallel` slots, each request decoded with its expert's
        adapter. The others load on their own, as `Expert.load` does."""
        from runtime.backends.gguf import AdapterView, GGUFBackend

        bundles = [resolve_bundle(path, verify=verify) for path in paths]
        shared_bases: dict[str, tuple[GGUFBackend, list]] = {}
        counts: dict[str, int] = {}
        for bundle in bundles:
            if bundle.lora_base_sha256 and backend in ("auto", "gguf"):
                counts[bundle.lora_base_sha256] = counts.get(bundle.lora_base_sha256, 0) + 1
        experts = []
        try:
            for path, bundle in zip(paths, bundles):
                key = bundle.lora_base_sha256
                if key is None or counts.get(key, 0) < 2:
                    experts.append(cls.load(path, backend, device, n_ctx=n_ctx, n_threads=n_threads, verify=False,
                                            parallel=parallel))
                    continue
                if key not in shared_bases:
                    shared = open_backend("gguf", bundle.lora_base, LoadOptions(device, n_ctx, n_threads, parallel))
                    shared_bases[key] = (shared, [])
                shared, users = shared_bases[key]
                view = AdapterView(shared, f"{len(users)}:{bundle.manifest.name}", bundle.lora_adapter, users)
                experts.append(cls(view, bundle.manifest, Path(path)))
        except BaseException:
            for expert in experts:
                expert.close()
            for shared, users in shared_bases.values():
                if not users:
                    shared.close()
            raise
        return experts

    @property
    def parallel(self) -> int:
        """Generations this expert runs at once."""
        return getattr(self.backend, "parallel", 1) if self.backend is not None else 1

    # -- identity ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def is_task_expert(self) -> bool:
        """Answers are JSON checked against the manifest's schema."""
        return self.manifest.output_format == "json" or self.manifest.output_schema is not None

    # -- prompts -----------------------------------------------------------------------------
    def params(self, **overrides: Any) -> GenerationParams:
        """The manifest's generation defaults with `overrides` (None values ignored)."""
        return self.defaults.updated(**overrides)

    def with_system_prompt(self, messages: list[Message]) -> list[Message]:
        if self.manifest.system_prompt and not any(m.get("role") == "system" for m in messages):
            return [{"role": "system", "content": self.manifest.system_prompt}, *messages]
        return list(messages)

    def render(self, messages: list[Message]) -> str:
        """The prompt text for a conversation: manifest system prompt, then the chat template."""
        if not self.chat_template:
            raise BundleError(f"{self.path} carries no chat template (manifest or model): use complete(prompt), "
                              "or re-export the bundle with the tokenizer's chat template")
        return render_chat(self.chat_template, self.with_system_prompt(messages), self.backend.bos_token,
                           self.backend.eos_token)

    # -- generation --------------------------------------------------------------------------
    def generate(self, prompt: str, params: GenerationParams, stats: GenerationStats | None = None) -> Iterator[str]:
        """Stream the completion of a raw prompt; the model is held from the first piece until the iterator ends
        or is closed (close it if you stop early)."""
        stats = stats if stats is not None else GenerationStats()
        with self._lock if self.parallel == 1 else nullcontext():
            backend = self._open_backend()
            pieces = backend.generate(prompt, params, stats)
            try:
                yield from pieces
            finally:
                pieces.close()

    def _open_backend(self) -> Backend:
        if self.backend is None:
            raise RuntimeError("this Expert was closed; load it again")
        return self.backend

    def chat(self, messages: list[Message], **overrides: Any) -> str:
        """The assistant's reply to `messages` (OpenAI-style dicts with role and content)."""
        return "".join(self.generate(self.render(messages), self.params(**overrides)))

    def stream(self, messages: list[Message], **overrides: Any) -> Iterator[str]:
        """The assistant's reply as it is generated, piece by piece."""
        return self.generate(self.render(messages), self.params(**overrides))

    def complete(self, prompt: str, **overrides: Any) -> str:
        """Raw text completion, no chat template and no system prompt."""
        return "".join(self.generate(prompt, self.params(**overrides)))

    def run(self, input: Any, **overrides: Any) -> Any:
        """Answer one task input; a JSON expert's answer is returned parsed and validated against the manifest's
        schema (OutputError if it does not validate). GGUF constrains sampling to the schema; ONNX cannot."""
        content = input if isinstance(input, str) else json.dumps(input, ensure_ascii=False)
        messages = [{"role": "user", "content": content}]
        if not self.is_task_expert:
            return self.chat(messages, **overrides)
        schema = self.manifest.output_schema
        constraint = {}
        if self._open_backend().constrains_json:
            constraint = {"json_schema": self.request_schema(content)} if schema is not None else {"json_object": True}
        text = self.chat(messages, **{**constraint, **overrides})
        return parse_json_output(self.finish(text), schema)

    def finish(self, text: str) -> str:
        """A task answer as apps get it: arithmetic the model wrote worked out, clock times converted."""
        return self.rules.finish(text)

    def request_schema(self, content: str) -> dict[str, Any] | None:
        """The bundle's output schema as one request with this text is decoded with (runtime.answer_rules)."""
        return self.rules.schema(self.manifest.output_schema, content)

    def run_many(self, inputs: list[Any], *, return_exceptions: bool = False, **overrides: Any) -> list[Any]:
        """`run` for every input, up to `parallel` decoded together; answers in input order. An input whose answer
        fails (OutputError...) raises, or with return_exceptions=True takes the exception's place in the list."""
        return self._many(lambda item: self.run(item, **overrides), inputs, return_exceptions)

    def chat_many(self, conversations: list[list[Message]], **overrides: Any) -> list[str]:
        """`chat` for every conversation, up to `parallel` decoded together; replies in order."""
        return self._many(lambda messages: self.chat(messages, **overrides), conversations, False)

    def _many(self, call, items: list[Any], return_exceptions: bool) -> list[Any]:
        def guarded(item: Any) -> Any:
            try:
                return call(item)
            except Exception as err:  # noqa: BLE001 - returned in the item's place when asked
                if not return_exceptions:
                    raise
                return err

        if self.parallel == 1 or len(items) < 2:
            return [guarded(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.parallel, len(items)), thread_name_prefix="expert") as pool:
            return list(pool.map(guarded, items))

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Free the model (waits for a generation in progress)."""
        with self._lock:
            if self.backend is not None:
                self.backend.close()
                self.backend = None

    def __enter__(self) -> "Expert":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        backend = self.backend.name if self.backend else "closed"
        return f"Expert({self.name!r}, backend={backend!r}, path={str(self.path)!r})"


def parse_json_output(text: str, schema: dict[str, Any] | None) -> Any:
    """Parse a JSON answer and validate it against `schema`; OutputError names what is wrong."""
    import jsonschema

    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise OutputError(f"the model's output is not JSON ({err.msg} at char {err.pos})", text) from None
    if schema is not None:
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as err:
            raise OutputError(f"the model's output breaks the output schema: {err.message}", text) from None
    return value
