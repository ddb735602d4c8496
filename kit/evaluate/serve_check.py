"""The last step of `kit build`: start `kit serve` on the bundle as a user would, send it one request over
the OpenAI-compatible API, and stop it. Proves the bundle serves before anyone relies on it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit.core.errors import UserError
from runtime.manifest import read_manifest


@dataclass(frozen=True)
class ServeCheck:
    request: str
    reply: str
    seconds: float  # the one request, server already up
    startup_s: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_check(bundle: Path, request: str, *, max_tokens: int = 128, startup_timeout_s: float = 120.0) -> ServeCheck:
    """Serve `bundle` on a free local port, ask it `request` through /v1/chat/completions, shut it down."""
    import httpx

    port = free_port()
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "kit", "serve", str(bundle), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        model = _wait_ready(server, base, startup_timeout_s)
        startup = time.perf_counter() - started
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": request}],
                                "max_tokens": max_tokens, "temperature": 0.0}
        manifest = read_manifest(bundle)
        if manifest.output_schema is not None and manifest.files_of_kind("gguf"):
            # as an app asks a JSON expert: for its own schema (copied fields held to the request); GGUF serves it
            schema = manifest.output_schema
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
        asked = time.perf_counter()
        response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=300.0)
        seconds = time.perf_counter() - asked
        if response.status_code != 200:
            raise UserError(f"the served bundle answered {response.status_code}: {response.text[:300]}; "
                            f"try `kit serve {bundle}` by hand to see why")
        reply = response.json()["choices"][0]["message"]["content"]
        return ServeCheck(request, reply, seconds, startup)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_ready(server: subprocess.Popen, base: str, timeout_s: float) -> str:
    """Wait for /health; the model id the server answers to."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            output = (server.stdout.read() if server.stdout else "").strip().splitlines()[-3:]
            raise UserError(f"`kit serve` stopped at start: {' | '.join(output)}")
        try:
            health = httpx.get(f"{base}/health", timeout=2.0)
            if health.status_code == 200:
                return health.json()["model"]
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise UserError(f"`kit serve` did not answer on {base} within {timeout_s:.0f}s; try it by hand")


def first_eval_input(eval_file: Path | None, seeds: list) -> str:
    """A request to try: the first held-out case, else the first seed."""
    if eval_file is not None and Path(eval_file).is_file():
        for line in Path(eval_file).read_text().splitlines():
            if line.strip():
                value = json.loads(line)["input"]
                return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    value = seeds[0].input
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
