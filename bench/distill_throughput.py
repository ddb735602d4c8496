"""Generation throughput of `kit generate` against a local llama.cpp server, as a ratio to that server's
own capacity measured in the same run: a plain concurrent client replays exactly the requests the engine
sent (read back from the engine's request cache), with the same concurrency.

    .venv/bin/python bench/distill_throughput.py [--model smollm2-135m-instruct] [--target 8] [--concurrency 4]

Prints figures; asserts nothing. ratio = the engine's completion tokens/s divided by the plain client's on
the same requests (goal: >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

RECIPE = """\
task: {{name: bench-units, description: Convert a quantity between metric and imperial units.}}
output:
  format: json
  schema: {{type: object, properties: {{value: {{type: number}}, unit: {{type: string}}}}, required: [value, unit]}}
seeds:
  - {{input: 3 miles in km, output: {{value: 4.83, unit: km}}, reasoning: 1 mile is 1.609 km.}}
  - {{input: 10 kg in pounds, output: {{value: 22.05, unit: lb}}, reasoning: 1 kg is 2.205 lb.}}
  - {{input: 5 feet in meters, output: {{value: 1.52, unit: m}}, reasoning: 1 foot is 0.3048 m.}}
teacher: {{backend: openai, base_url: "{url}", model: bench, max_tokens: {max_tokens}, concurrency: {concurrency}}}
critic: {{verifiers: [{{type: json_schema}}, {{type: dedup}}], max_attempts_factor: 3}}
data: {{target_samples: {target}, topics: [cooking, travel, science, sport]}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: Path, log: Path, threads: int | None = None) -> tuple[subprocess.Popen, str]:
    """A llama-cpp-python server on loopback with `model` (`threads`: its decoding threads, default llama.cpp's)."""
    port = free_port()
    sink = open(log, "wb")
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                                "--port", str(port), "--n_ctx", "4096", "--verbose", "False",
                                *(["--n_threads", str(threads)] if threads else [])],
                               stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"server did not start; see {log}")


async def plain_client(url: str, bodies: list[dict], concurrency: int) -> tuple[float, int]:
    """The server's capacity: the same requests, the same concurrency, nothing else."""
    slots = asyncio.Semaphore(concurrency)
    tokens = 0
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        async def one(body: dict) -> None:
            nonlocal tokens
            async with slots:
                response = await client.post("/chat/completions", json=body)
                tokens += response.json()["usage"]["completion_tokens"]

        start = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        return time.perf_counter() - start, tokens


def openai_body(cached: dict) -> dict:
    body = {"model": cached["model"], "messages": cached["messages"], **cached["params"]}
    if cached["schema"] is not None:
        body["response_format"] = {"type": "json_object", "schema": cached["schema"]}
    return body


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--target", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="engine/plain pairs, alternated (the machine is shared)")
    args = parser.parse_args()

    from kit.core.run_dir import RunDir
    from kit.distill.generate import CACHE_FILE, run
    from kit.distill.teachers import RequestCache
    from kit.models.reference import resolve_model
    from kit.recipe.loader import load_recipe
    from kit.recipe.stages import generate_config

    work = Path(tempfile.mkdtemp(prefix="distill-bench-"))
    process, url = start_server(resolve_model(args.model).gguf(), work / "server.log")
    try:
        recipe = work / "recipe.yaml"
        recipe.write_text(textwrap.dedent(RECIPE.format(url=url, target=args.target, concurrency=args.concurrency,
                                                        max_tokens=args.max_tokens)))
        asyncio.run(plain_client(url, [{"model": "warm", "messages": [{"role": "user", "content": "hi"}],
                                        "max_tokens": 4}], 1))
        ratios = []
        print(f"model {args.model}, concurrency {args.concurrency}, max_tokens {args.max_tokens}, "
              f"target {args.target}; llama-cpp-python's server runs one request at a time")
        for round_ in range(args.rounds):
            run_dir = RunDir(work / f"run{round_}")  # a fresh run: same plan, same seeds, nothing cached
            start = time.perf_counter()
            manifest = run(generate_config(load_recipe(recipe)), run_dir)
            engine_s = time.perf_counter() - start
            stats = json.loads((run_dir.data / "stats.json").read_text())
            bodies = [openai_body(r) for r in RequestCache(run_dir.data / CACHE_FILE).requests()]
            plain_s, plain_tokens = asyncio.run(plain_client(url, bodies, args.concurrency))
            engine_tokens = stats["tokens"]["completion"]
            engine_rate, plain_rate = engine_tokens / engine_s, plain_tokens / plain_s
            ratios.append(engine_rate / plain_rate)
            print(f"round {round_ + 1}: kit generate {stats['accepted']} accepted / {stats['attempts']} attempts "
                  f"(acceptance {stats['acceptance_rate']:.0%}), {len(bodies)} requests, {engine_tokens} tokens in "
                  f"{engine_s:.1f}s -> {engine_rate:.1f} tok/s, {manifest.figures['accepted'] / engine_s:.3f} samples/s;"
                  f" plain client {plain_tokens} tokens in {plain_s:.1f}s -> {plain_rate:.1f} tok/s;"
                  f" ratio {ratios[-1]:.2f}")
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(f"throughput ratio (engine / server capacity, completion tokens/s): best {max(ratios):.2f}, "
          f"mean {sum(ratios) / len(ratios):.2f}")


if __name__ == "__main__":
    main()
