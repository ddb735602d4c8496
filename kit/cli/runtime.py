"""`kit chat`, `kit run`, `kit serve`: map flags onto the runtime's Expert and ServerSettings."""

from __future__ import annotations

import itertools
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer

from kit.core.errors import UserError
from runtime import Expert
from runtime.errors import BundleError, ContextLengthError, OutputError

BUNDLE_HELP = "a bundle folder, a .gguf file or an ONNX folder"
# the loading and sampling flags `chat` and `run` share
Backend = Annotated[str, typer.Option(help="auto | gguf | onnx")]
Device = Annotated[str, typer.Option(help="auto | cpu | gpu")]
NCtx = Annotated[Optional[int], typer.Option("--n-ctx", help="context window in tokens")]
Threads = Annotated[Optional[int], typer.Option(help="CPU threads")]
MaxTokens = Annotated[Optional[int], typer.Option("--max-tokens", help="override the bundle's max_tokens")]
Temperature = Annotated[Optional[float], typer.Option(help="override the bundle's temperature")]


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
    app.command("run")(run)
    app.command("serve")(serve)


def _options(**values: Any) -> dict[str, Any]:
    """Only the flags the user gave, so that defaults live in one place (the runtime)."""
    return {k: v for k, v in values.items() if v is not None}


@contextmanager
def _user_errors() -> Iterator[None]:

    try:
        yield
    except (BundleError, ContextLengthError, OutputError) as err:
        raise UserError(str(err)) from None


def _load(bundle: Path, backend: str, device: str, n_ctx: Optional[int], threads: Optional[int], parallel: int = 1):

    with _user_errors():
        return Expert.load(bundle, backend=backend, device=device, parallel=parallel,
                           **_options(n_ctx=n_ctx, n_threads=threads))


def chat(
    bundle: Path = typer.Argument(..., help=BUNDLE_HELP),
    backend: Backend = "auto",
    device: Device = "auto",
    n_ctx: NCtx = None,
    threads: Threads = None,
    max_tokens: MaxTokens = None,
    temperature: Temperature = None,
) -> None:
    """Talk to an expert, streaming; /reset forgets the conversation, /system TEXT sets the system prompt."""
    with _load(bundle, backend, device, n_ctx, threads) as expert:
        overrides = _options(max_tokens=max_tokens, temperature=temperature)
        history: list[dict[str, str]] = []
        system: list[dict[str, str]] = []
        typer.echo(f"{expert.name} ({expert.backend.name} on {expert.backend.device}). /reset, /system TEXT, /exit")
        while True:
            try:
                line = input("> ")
            except (EOFError, KeyboardInterrupt):
                typer.echo()
                return
            if line.strip() in ("/exit", "/quit"):
                return
            if line.strip() == "/reset":
                history.clear()
                typer.echo("(conversation cleared)")
                continue
            if line.startswith("/system"):
                text = line[len("/system"):].strip()
                system = [{"role": "system", "content": text}] if text else []
                history.clear()
                typer.echo(f"(system prompt {'set' if text else 'back to the bundle default'}; conversation cleared)")
                continue
            if not line.strip():
                continue
            history.append({"role": "user", "content": line})
            reply = []
            # a JSON task expert answers each turn as `kit run` would: held to its schema for this request and
            # finished as apps get it (printed whole when finishing may rewrite it)
            turn = {"json_schema": expert.request_schema(line)} if expert.is_task_expert and \
                expert.manifest.output_schema is not None and expert.backend.constrains_json else {}
            whole = bool(turn) and expert.rules.rewrites_answers
            with _user_errors():
                for piece in expert.stream(system + history, **{**turn, **overrides}):
                    reply.append(piece)
                    if not whole:
                        sys.stdout.write(piece)
                        sys.stdout.flush()
            if whole:
                reply = [expert.finish("".join(reply))]
                sys.stdout.write(reply[0])
            sys.stdout.write("\n")
            history.append({"role": "assistant", "content": "".join(reply)})


def _task_input(line: str) -> Any:
    """A JSON line (any value) or, if it is not JSON, the text itself."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return line


def run(
    bundle: Path = typer.Argument(..., help=BUNDLE_HELP),
    input: Optional[str] = typer.Argument(None, help="the task input; without it, one JSON value per stdin line"),
    backend: Backend = "auto",
    device: Device = "auto",
    n_ctx: NCtx = None,
    threads: Threads = None,
    max_tokens: MaxTokens = None,
    temperature: Temperature = None,
    seed: Optional[int] = typer.Option(None, help="sampling seed"),
    parallel: int = typer.Option(1, "--parallel", "-np", min=1,
                                 help="stdin lines answered together (GGUF continuous batching); output keeps their order"),
) -> None:
    """Answer one input (or a JSON-lines batch on stdin); task experts print schema-valid JSON."""
    overrides = _options(max_tokens=max_tokens, temperature=temperature, seed=seed)
    with _load(bundle, backend, device, n_ctx, threads, parallel) as expert:
        if input is not None:
            with _user_errors():
                answer = expert.run(input, **overrides)
            typer.echo(json.dumps(answer, ensure_ascii=False) if expert.is_task_expert else answer)
            return
        lines = (line for line in sys.stdin if line.strip())
        while batch := list(itertools.islice(lines, 4 * expert.parallel)):
            answers = expert.run_many([_task_input(line) for line in batch], return_exceptions=True, **overrides)
            for answer in answers:
                if isinstance(answer, Exception):  # the answers before it are printed; this one ends the run
                    with _user_errors():
                        raise answer
                # One JSON line per input line, so batches stay machine-readable for text experts too.
                typer.echo(json.dumps(answer, ensure_ascii=False))


def serve(
    bundles: list[Path] = typer.Argument(..., help=BUNDLE_HELP + "; several are served by one process, each under its "
                                         "own name (bundles with LoRA adapters on one base share it)"),
    host: Optional[str] = typer.Option(None, help="address to bind (default 127.0.0.1: this machine only)"),
    port: Optional[int] = typer.Option(None, help="port (default 8000)"),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="environment variable holding the API key"),
    model_id: Optional[str] = typer.Option(None, "--model-id", help="model name clients send (default: the bundle's)"),
    backend: Optional[str] = typer.Option(None, help="auto | gguf | onnx"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | gpu"),
    n_ctx: Optional[int] = typer.Option(None, "--n-ctx", help="context window in tokens"),
    threads: Optional[int] = typer.Option(None, help="CPU threads"),
    parallel: Optional[int] = typer.Option(None, "--parallel", "-np", min=1,
                                           help="requests decoded together (GGUF continuous batching; default 1)"),
    max_tokens_limit: Optional[int] = typer.Option(None, "--max-tokens-limit", help="largest max_tokens accepted"),
    max_queue: Optional[int] = typer.Option(None, "--max-queue", help="requests queued before 503"),
    max_body_bytes: Optional[int] = typer.Option(None, "--max-body-bytes", help="largest request body accepted"),
) -> None:
    """Serve an expert over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, ...)."""
    from runtime.server import ServerSettings
    from runtime.server import serve as serve_forever

    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise UserError(f"--api-key-env {api_key_env}: that environment variable is not set; export it first")
    settings = ServerSettings(model=str(bundles[0]), more_models=tuple(str(b) for b in bundles[1:]), **_options(
        host=host, port=port, api_key=api_key, model_id=model_id, backend=backend, device=device, n_ctx=n_ctx,
        n_threads=threads, parallel=parallel, max_tokens_limit=max_tokens_limit, max_queue=max_queue, max_body_bytes=max_body_bytes))
    with _user_errors():
        serve_forever(settings)
