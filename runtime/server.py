"""The OpenAI-compatible HTTP server, built by a factory: `create_app(ServerSettings(...))`, served by uvicorn."""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from runtime.answer_rules import AnswerRules
from runtime.errors import BundleError, ContextLengthError
from runtime.expert import Expert
from runtime.params import GenerationParams, GenerationStats
from runtime.server_api import APIError, ChatCompletionRequest, CompletionRequest, completion_id, error_response, now
from runtime.server_limits import CountResponses, Metrics, QueueFull, Slots

ROUTES = {"/v1/models", "/v1/chat/completions", "/v1/completions", "/health", "/metrics"}


@dataclass
class ServerSettings:
    """Everything `kit serve` can set; the CLI maps its flags onto these fields."""

    model: str  # a bundle folder, a .gguf file or an ONNX folder
    more_models: tuple[str, ...] = ()  # more experts served by the same process, routed by the request's `model`
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # when set, /v1/* needs "Authorization: Bearer <key>"
    model_id: str | None = None  # the name clients pass as `model`; default: the bundle's name
    backend: str = "auto"
    device: str = "auto"
    n_ctx: int = 2048
    n_threads: int | None = None
    parallel: int = 1  # requests decoded together (GGUF: continuous batching, like llama-server --parallel)
    max_body_bytes: int = 1 << 20
    max_tokens_limit: int = 1024  # a request asking for more is refused (400)
    max_queue: int = 16  # requests waiting for a slot beyond the `parallel` running ones; more get 503
    queue_timeout_s: float = 120.0  # a queued request waiting longer gets 503


_END = object()


class Generation:
    """One generation in a worker thread, handing its text pieces to the event loop; cancel() stops it."""

    def __init__(self, expert: Expert, prompt: str, params: GenerationParams, on_done: Callable[["Generation"], None],
                 executor: Executor | None = None):
        self.stats = GenerationStats()
        self.started = time.perf_counter()
        self.first_token_s: float | None = None
        self.finished = False
        self._cancel = threading.Event()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._first: Any = None
        loop = asyncio.get_running_loop()
        self._done = loop.run_in_executor(executor, self._produce, loop, expert, prompt, params)
        self._done.add_done_callback(lambda _: on_done(self))

    def _produce(self, loop: asyncio.AbstractEventLoop, expert: Expert, prompt: str, params: GenerationParams) -> None:
        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(self._queue.put_nowait, item)
            except RuntimeError:  # the loop closed (server shutting down)
                self._cancel.set()

        try:
            with closing(expert.generate(prompt, params, self.stats)) as pieces:
                for piece in pieces:
                    if self.first_token_s is None:
                        self.first_token_s = time.perf_counter() - self.started
                    if self._cancel.is_set():
                        break
                    put(piece)
        except Exception as err:  # handed to the request, which answers it
            put(err)
        finally:
            put(_END)

    async def _next(self) -> Any:
        item = await self._queue.get()
        if isinstance(item, Exception):
            raise item
        return item

    async def start(self) -> None:
        """Wait for the first piece, so that errors (prompt too long...) still get a status code."""
        self._first = await self._next()

    async def pieces(self) -> AsyncIterator[str]:
        try:
            item = self._first if self._first is not None else await self._next()
            while item is not _END:
                yield item
                item = await self._next()
            self.finished = True
        finally:
            self._cancel.set()

    async def text(self) -> str:
        return "".join([piece async for piece in self.pieces()])

    def cancel(self) -> None:
        self._cancel.set()


class Gatekeeper:
    """ASGI middleware run before the body is read: /v1/* needs the bearer key (401); a declared body over
    the limit is refused at once (413). Bodies without a length are cut off by the routes' limit."""

    def __init__(self, app: ASGIApp, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            length = headers.get(b"content-length", b"")
            if self.api_key and scope["path"].startswith("/v1/") and (
                    scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self.api_key.encode())):
                response = error_response(401, "Incorrect or missing API key: send `Authorization: Bearer <key>`",
                                          code="invalid_api_key")
                await response(scope, receive, send)
                return
            if length.isdigit() and int(length) > self.max_body_bytes:
                response = error_response(413, f"the request body is over {self.max_body_bytes} bytes",
                                          code="request_too_large")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def for_bundle_schema(params: GenerationParams, manifest,
                      messages: list) -> tuple[GenerationParams, Callable[[str], str] | None]:
    """A request for the bundle's own output schema is decoded as `Expert.run` decodes it (runtime.answer_rules:
    copied fields held to the last user message's words, derived numbers and clock times offered in the model's
    own form), and the returned `finish` writes the reply as apps get it (None when it changes nothing). Any
    other schema is the client's and is left as it is."""
    rules = AnswerRules.of(manifest)
    if params.json_schema is None or params.json_schema != manifest.output_schema or not rules:
        return params, None
    user = next((m for m in reversed(messages) if m.role == "user"), None)
    if user is None:
        return params, None
    schema = rules.schema(params.json_schema, user.as_template_message()["content"])
    return params.updated(json_schema=schema), (rules.finish if rules.rewrites_answers else None)


def load_experts(settings: ServerSettings) -> dict[str, Expert]:
    """The experts to serve by the name clients pass as `model`; bundles that ship LoRA adapters on one base share
    that base (Expert.load_many)."""
    paths = [settings.model, *settings.more_models]
    if settings.model_id and len(paths) > 1:
        raise BundleError("--model-id names a single served model; with several bundles each is served by its own name")
    experts = Expert.load_many(paths, backend=settings.backend, device=settings.device, n_ctx=settings.n_ctx,
                               n_threads=settings.n_threads, parallel=settings.parallel)
    named: dict[str, Expert] = {}
    for expert in experts:
        name = settings.model_id or expert.name
        if name in named:
            for loaded in experts:
                loaded.close()
            raise BundleError(f"two of the served bundles are both named '{name}'; serve them from separate processes")
        named[name] = expert
    return named


def create_app(settings: ServerSettings, expert: Expert | None = None) -> FastAPI:
    """The server for the experts in settings (or the one given), each under its own `model` name."""
    experts = {settings.model_id or expert.name: expert} if expert is not None else load_experts(settings)
    expert = next(iter(experts.values()))
    # experts on one shared base (LoRA adapters) share its backend and its slots
    loaded = (getattr(e.backend, "shared", e.backend) for e in experts.values())
    backends = list({id(backend): backend for backend in loaded}.values())
    capacity = sum(getattr(backend, "parallel", 1) for backend in backends)
    slots = Slots(running=capacity, queue=settings.max_queue, timeout_s=settings.queue_timeout_s)
    with_cache = [b for b in backends if hasattr(b, "cache_stats")]

    def cache_stats() -> dict[str, int]:
        totals = [b.cache_stats() for b in with_cache]
        return {key: sum(t[key] for t in totals) for key in ("prompt_tokens", "reused_tokens")}

    metrics = Metrics(cache_stats=cache_stats if with_cache else None)
    # one thread per running generation (each hands its pieces to the event loop)
    executor = ThreadPoolExecutor(max_workers=capacity, thread_name_prefix="generation")
    app = FastAPI(title="microkit", docs_url=None, redoc_url=None)
    limit = settings.max_body_bytes
    app.state.expert, app.state.settings, app.state.metrics, app.state.slots = expert, settings, metrics, slots
    app.state.experts = experts
    app.add_middleware(Gatekeeper, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(CountResponses, metrics=metrics, known_paths=ROUTES)
    _add_error_handlers(app)

    def finished(generation: Generation) -> None:
        slots.release()
        metrics.generations += 1
        metrics.generation_seconds += time.perf_counter() - generation.started
        metrics.prompt_tokens += generation.stats.prompt_tokens
        metrics.completion_tokens += generation.stats.completion_tokens
        metrics.note_tokens(generation.stats.completion_tokens)
        if generation.first_token_s is not None:
            metrics.first_tokens += 1
            metrics.first_token_seconds += generation.first_token_s

    async def start(expert: Expert, prompt: str, params: GenerationParams) -> Generation:
        if params.max_tokens > settings.max_tokens_limit:
            raise APIError(400, f"max_tokens is too large: {params.max_tokens}. This server allows at most "
                                f"{settings.max_tokens_limit} completion tokens", param="max_tokens", code="invalid_value")
        await slots.acquire()
        try:
            generation = Generation(expert, prompt, params, on_done=finished, executor=executor)
        except BaseException:
            slots.release()
            raise
        try:
            await generation.start()
        except BaseException:
            generation.cancel()
            raise
        return generation

    def pick(name: str) -> Expert:
        if name not in experts:
            raise APIError(404, f"The model '{name}' does not exist; this server serves "
                                f"{', '.join(repr(n) for n in experts)}", param="model", code="model_not_found")
        return experts[name]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": next(iter(experts)), "models": list(experts), "backend": expert.backend.name,
                "device": expert.backend.device}

    @app.get("/metrics")
    async def prometheus_metrics() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(slots), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "microkit"}
                                           for name in experts]}

    @app.post("/v1/chat/completions", max_body_size=limit)
    async def chat_completions(body: ChatCompletionRequest):
        expert = pick(body.model)
        params, finish = for_bundle_schema(body.params(expert.defaults), expert.manifest, body.messages)
        if (params.json_schema is not None or params.json_object) and not expert.backend.constrains_json:
            raise APIError(400, f"this server's {expert.backend.name} backend cannot constrain output to JSON; "
                                "serve the bundle's GGUF for response_format", param="response_format")
        try:
            prompt = expert.render([m.as_template_message() for m in body.messages])
        except (ValueError, BundleError) as err:
            raise APIError(400, f"cannot apply the chat template: {err}", param="messages") from None
        generation = await start(expert, prompt, params)
        reply = _Reply(completion_id("chatcmpl"), "chat.completion", body.model, generation, finish)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return EventSourceResponse(reply.chat_events(include_usage, metrics), ping=15)
        return reply.chat_body(await generation.text())

    @app.post("/v1/completions", max_body_size=limit)
    async def completions(body: CompletionRequest):
        expert = pick(body.model)
        generation = await start(expert, body.prompt_text(), body.params(expert.defaults))
        reply = _Reply(completion_id("cmpl"), "text_completion", body.model, generation)
        if body.stream:
            return EventSourceResponse(reply.text_events(metrics), ping=15)
        return reply.text_body(await generation.text())

    return app


@dataclass
class _Reply:
    """Shapes one generation as an OpenAI response body or as SSE chunks."""

    id: str
    object: str
    model: str
    generation: Generation
    finish: Callable[[str], str] | None = None  # writes the whole reply as apps get it: streamed as one piece

    def _usage(self) -> dict[str, int]:
        stats = self.generation.stats
        return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
                "total_tokens": stats.prompt_tokens + stats.completion_tokens}

    def _envelope(self, object: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": object, "created": now(), "model": self.model, "choices": choices, **extra}

    def chat_body(self, text: str) -> dict[str, Any]:
        text = self.finish(text) if self.finish is not None else text
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": self.generation.stats.finish_reason or "stop"}
        return self._envelope("chat.completion", [choice], usage=self._usage())

    def text_body(self, text: str) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": self.generation.stats.finish_reason or "stop"}
        return self._envelope("text_completion", [choice], usage=self._usage())

    def _chat_chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return json.dumps(self._envelope("chat.completion.chunk", [choice]), ensure_ascii=False)

    async def chat_events(self, include_usage: bool, metrics: Metrics) -> AsyncIterator[str]:
        try:
            yield self._chat_chunk({"role": "assistant", "content": ""})
            if self.finish is not None:
                yield self._chat_chunk({"content": self.finish(await self.generation.text())})
            else:
                async for piece in self.generation.pieces():
                    yield self._chat_chunk({"content": piece})
            yield self._chat_chunk({}, self.generation.stats.finish_reason or "stop")
            if include_usage:
                yield json.dumps(self._envelope("chat.completion.chunk", [], usage=self._usage()))
            yield "[DONE]"
        finally:
            self._note_disconnect(metrics)

    async def text_events(self, metrics: Metrics) -> AsyncIterator[str]:
        try:
            async for piece in self.generation.pieces():
                choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": None}
                yield json.dumps(self._envelope("text_completion", [choice]), ensure_ascii=False)
            choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": self.generation.stats.finish_reason or "stop"}
            yield json.dumps(self._envelope("text_completion", [choice]))
            yield "[DONE]"
        finally:
            self._note_disconnect(metrics)

    def _note_disconnect(self, metrics: Metrics) -> None:
        # A client that leaves mid-stream cancels this generator: stop the model so the slot frees.
        self.generation.cancel()
        if not self.generation.finished:
            metrics.disconnects += 1


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, err: RequestValidationError) -> JSONResponse:
        problem = err.errors()[0]
        if problem.get("type") == "json_invalid":
            return error_response(400, "We could not parse the JSON body of your request: "
                                       f"{problem.get('ctx', {}).get('error', 'invalid JSON')}", code="invalid_json")
        loc = [str(part) for part in problem.get("loc", ()) if part != "body"]
        param = ".".join(loc) or None
        return error_response(400, f"Invalid value for '{param}': {problem.get('msg')}", param=param,
                              code="invalid_type" if "type" in str(problem.get("type")) else "invalid_value")

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        return error_response(err.status_code, str(err.detail), code=codes.get(err.status_code))

    @app.exception_handler(ContextLengthError)
    async def too_long(_: Request, err: ContextLengthError) -> JSONResponse:
        return error_response(400, str(err), param="messages", code="context_length_exceeded")

    @app.exception_handler(QueueFull)
    async def busy(_: Request, err: QueueFull) -> JSONResponse:
        return error_response(503, str(err), type="server_error", code="server_busy", headers={"Retry-After": "1"})


def serve(settings: ServerSettings) -> None:
    """Load the expert and serve it with uvicorn until interrupted."""
    import uvicorn

    started = time.perf_counter()
    app = create_app(settings)
    print(f"microkit: serving {', '.join(repr(n) for n in app.state.experts)} ({app.state.expert.backend.name} on "
          f"{app.state.expert.backend.device}, loaded in {time.perf_counter() - started:.2f}s) at "
          f"http://{settings.host}:{settings.port}/v1", flush=True)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    finally:
        for expert in app.state.experts.values():
            expert.close()
