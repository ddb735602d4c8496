"""Server soak: `kit serve` under a long mixed load from many clients, on loopback, bounded in time and count.

    .venv/bin/python bench/server_soak.py [--model PATH|smollm2-135m-instruct] [--requests 2000] [--clients 32]
        [--parallel 4] [--max-tokens 12] [--warmup 100]

Each client sends requests one after another, its kind taken in turn from: a plain chat completion, a streamed
one, one held to a JSON schema, a streamed one held to a schema, a body that is no JSON (400), a body over the
server's limit (413), a max_tokens over the server's limit (400), a stream the client leaves after its first
chunks, and a slow client reading a stream chunk by chunk. Prints what came back by kind and status, the server's
RSS after warm-up and after the soak, and whether /metrics counted what the clients saw; the checks print PASS or
FAIL (never run in tests):
- the server process never exits and every request gets a response or a proper error code (400, 413, 503);
- RSS after the soak within 10% of RSS after warm-up;
- /metrics' microkit_requests_total for /v1/chat/completions, by status, equals the clients' counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
KINDS = ["plain", "stream", "schema", "schema-stream", "malformed", "oversized-body", "oversized-max-tokens",
         "disconnect", "slow"]
BODY_LIMIT = 64 << 10
MAX_TOKENS_LIMIT = 256


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def model_path(name: str) -> str:
    if Path(name).exists():
        return name
    from kit.models.store import ModelStore

    return str(ModelStore().pull(name))


def body(kind: str, index: int, max_tokens: int) -> dict:
    text = f"Maria Lopez is {20 + index % 50} years old. Who is this? (request {index})"
    request = {"model": "soak", "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
               "temperature": 0.7, "seed": index}
    if kind.startswith("schema"):
        request["response_format"] = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    if kind in ("stream", "schema-stream", "disconnect", "slow"):
        request["stream"] = True
    if kind == "oversized-max-tokens":
        request["max_tokens"] = 10 ** 9
    return request


async def one(client: httpx.AsyncClient, url: str, kind: str, index: int, max_tokens: int) -> tuple[str, int, str]:
    """(kind, status, problem): status 0 when no response came; problem empty when the answer was right."""
    endpoint = url + "/v1/chat/completions"
    if kind == "malformed":
        reply = await client.post(endpoint, content=b'{"messages": [', headers={"content-type": "application/json"})
        return kind, reply.status_code, "" if reply.status_code == 400 else f"expected 400: {reply.text[:80]}"
    if kind == "oversized-body":
        payload = body("plain", index, max_tokens)
        payload["messages"][0]["content"] += " pad" * BODY_LIMIT
        reply = await client.post(endpoint, json=payload)
        return kind, reply.status_code, "" if reply.status_code == 413 else f"expected 413, got {reply.status_code}"
    payload = body(kind, index, max_tokens)
    if not payload.get("stream"):
        reply = await client.post(endpoint, json=payload)
        if kind == "oversized-max-tokens":
            return kind, reply.status_code, "" if reply.status_code == 400 else f"expected 400, got {reply.status_code}"
        if reply.status_code != 200:
            return kind, reply.status_code, "" if reply.status_code == 503 else reply.text[:80]
        content = reply.json()["choices"][0]["message"]["content"]
        if kind == "schema":
            try:
                json.loads(content)
            except ValueError:
                if reply.json()["choices"][0]["finish_reason"] != "length":
                    return kind, 200, f"not JSON: {content[:60]}"
        return kind, 200, ""
    async with client.stream("POST", endpoint, json=payload) as reply:
        if reply.status_code != 200:
            await reply.aread()
            return kind, reply.status_code, "" if reply.status_code == 503 else reply.text[:80]
        chunks, done = 0, False
        async for line in reply.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunks += 1
            if kind == "disconnect" and chunks >= 2:
                return kind, 200, ""  # leaves mid-stream: the server must free the slot
            if kind == "slow":
                await asyncio.sleep(0.05)
        return kind, 200, "" if done else "stream ended without [DONE]"


async def soak(url: str, requests: int, clients: int, max_tokens: int, start: int = 0) -> list[tuple[str, int, str]]:
    results: list[tuple[str, int, str]] = []
    counter = iter(range(start, start + requests))
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients)

    async def client_loop(client: httpx.AsyncClient) -> None:
        for index in counter:
            kind = KINDS[index % len(KINDS)]
            try:
                results.append(await one(client, url, kind, index, max_tokens))
            except (httpx.HTTPError, OSError) as err:
                results.append((kind, 0, f"no response: {type(err).__name__} {err}"[:120]))

    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return results


def metrics_counts(url: str) -> Counter:
    text = httpx.get(url + "/metrics", timeout=30).text
    counts: Counter = Counter()
    for path, status, value in re.findall(r'microkit_requests_total\{path="([^"]+)",status="(\d+)"\} (\d+)', text):
        if path == "/v1/chat/completions":
            counts[int(status)] += int(value)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a bundle, a GGUF or a model-store name")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(ROOT / ".venv/bin/kit"), "serve", model_path(args.model), "--port", str(port),
                               "--model-id", "soak", "--parallel", str(args.parallel), "--max-queue", "64",
                               "--max-body-bytes", str(BODY_LIMIT), "--max-tokens-limit", str(MAX_TOKENS_LIMIT),
                               "--n-ctx", "512"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        started = time.time()
        warm = asyncio.run(soak(url, args.warmup, args.clients, args.max_tokens))
        rss_warm = rss_mb(server.pid)
        rest = asyncio.run(soak(url, args.requests - args.warmup, args.clients, args.max_tokens, start=args.warmup))
        elapsed = time.time() - started
        time.sleep(1.0)
        alive = server.poll() is None
        rss_end = rss_mb(server.pid) if alive else float("nan")
        served = metrics_counts(url) if alive else Counter()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    results = warm + rest
    seen = Counter(status for _, status, _ in results)
    problems = [(kind, status, problem) for kind, status, problem in results if problem]
    print(f"{len(results)} requests from {args.clients} clients in {elapsed:.0f} s ({args.parallel} slots, "
          f"max_tokens {args.max_tokens}, {args.model})\n")
    print("| kind | requests | statuses |\n|---|---|---|")
    for kind in KINDS:
        statuses = Counter(status for k, status, _ in results if k == kind)
        print(f"| {kind} | {sum(statuses.values())} | " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())) + " |")
    growth = (rss_end - rss_warm) / rss_warm if rss_warm else float("nan")
    print(f"\nRSS after warm-up {rss_warm:.0f} MB, after the soak {rss_end:.0f} MB ({100 * growth:+.1f}%)")
    print(f"/metrics counted {dict(sorted(served.items()))}; clients saw {dict(sorted(seen.items()))}\n")
    checks = [
        ("server alive, every request answered with a proper code",
         alive and not problems and set(seen) <= {200, 400, 413, 503}),
        ("RSS growth within 10% of warm-up", alive and abs(growth) <= 0.10),
        ("/metrics counts equal the clients'", served == seen),
    ]
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    for kind, status, problem in problems[:10]:
        print(f"  {kind} ({status}): {problem}")
    sys.exit(0 if all(ok for _, ok in checks) else 1)


if __name__ == "__main__":
    main()
