"""Concurrent serving against llama.cpp's own server: `kit serve --parallel N` and `llama-server --parallel N`
(built once from the same pinned llama.cpp source by scripts/build_llama_server.sh), the same GGUF, the same
threads and the same prompts, at 1, 4, 8 and 16 concurrent clients.

    .venv/bin/python bench/serve_concurrency.py [--model GGUF | model-store name] [--clients 1,4,8,16] \
        [--requests 32] [--max-tokens 64] [--threads N]

Without --model: the store's SmolLM2-135M at Q8_0, the type the tool-calling expert ships (made from the store's
Hugging Face copy with llama.cpp's converter and quantizer into bench-runs/batch-cost/, as bench/batch_cost.py
makes it; the store's own GGUF is mostly Q4_1).

Each client sends chat completions one after another (greedy, `max_tokens` each, no streaming) until the
requests are spent; the server has as many slots as there are clients. Prints a markdown table: aggregate
completion tokens/s, p50 / p99 request latency, and microkit's throughput as a share of llama-server's; then
how much faster 8 clients on 8 slots finish the same requests than one client on one slot (one after another).
Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ["the sea", "a lost key", "winter mornings", "a small robot", "baking bread", "a night train", "old maps",
          "a city garden", "learning chess", "the moon", "a rainy market", "a lighthouse", "paper boats",
          "a mountain hut", "the first snow", "a busy kitchen"]


def prompts(count: int) -> list[str]:
    kinds = ["Write a short story about {}.", "Describe {} in a few sentences.", "Write a poem about {}."]
    return [kinds[i % len(kinds)].format(TOPICS[i % len(TOPICS)]) for i in range(count)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode})")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not come up")


def start(kind: str, model: Path, parallel: int, n_ctx: int, threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    if kind == "llama-server":
        command = [str(llama_server()), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
                   "-c", str(n_ctx * parallel), "-np", str(parallel), "-t", str(threads), "-tb", str(threads),
                   "--jinja", "--no-webui"]
    else:
        command = [sys.executable, "-m", "kit", "serve", str(model), "--port", str(port), "--parallel", str(parallel),
                   "--n-ctx", str(n_ctx), "--threads", str(threads), "--max-queue", "256", "--model-id", "bench"]
    process = subprocess.Popen(command, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process)
    return process, url


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def load(url: str, clients: int, texts: list[str], max_tokens: int) -> dict[str, float]:
    """`clients` threads share the requests; returns tokens/s over the whole run and latency percentiles."""
    latencies: list[float] = []
    tokens = 0
    queue = list(texts)

    def client() -> None:
        nonlocal tokens
        with httpx.Client(timeout=600) as http:
            while queue:
                try:
                    text = queue.pop()  # atomic: the clients share the list
                except IndexError:
                    return
                began = time.perf_counter()
                reply = http.post(url + "/v1/chat/completions", json={
                    "model": "bench", "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
                    "temperature": 0.0})
                reply.raise_for_status()
                latencies.append(time.perf_counter() - began)
                tokens += reply.json()["usage"]["completion_tokens"]

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    wall = time.perf_counter() - began
    ordered = sorted(latencies)
    return {"tok_s": tokens / wall, "wall": wall, "tokens": tokens, "p50": statistics.median(ordered),
            "p99": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]}


def llama_server() -> Path:
    done = subprocess.run(["bash", str(ROOT / "scripts" / "build_llama_server.sh")], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stderr.strip() or "could not build llama-server")
    return Path(done.stdout.strip().splitlines()[-1])


def model_path(name: str | None) -> Path:
    if name is None:
        sys.path.insert(0, str(ROOT / "bench"))
        from batch_cost import store_quants

        return store_quants(["Q8_0"], ROOT / "bench-runs" / "batch-cost")[0]
    if Path(name).is_file():
        return Path(name)
    from kit.models.reference import resolve_model

    return resolve_model(name).gguf()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a model-store name or a .gguf path (default: SmolLM2-135M "
                        "at Q8_0)")
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=512, help="context per slot")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--logs", type=Path, default=Path("bench-runs/serve"))
    args = parser.parse_args()
    from runtime.backends.base import default_threads

    threads = args.threads or default_threads()
    model = model_path(args.model)
    args.logs.mkdir(parents=True, exist_ok=True)
    llama_server()  # built before anything is timed
    texts = prompts(args.requests)
    results: dict[tuple[str, int], dict[str, float]] = {}
    for clients in [int(c) for c in args.clients.split(",")]:
        for kind in ("llama-server", "microkit"):
            process, url = start(kind, model, clients, args.n_ctx, threads, args.logs / f"{kind}-{clients}.log")
            try:
                load(url, clients, texts[:clients], args.max_tokens)  # warm-up
                results[(kind, clients)] = load(url, clients, texts, args.max_tokens)
            finally:
                stop(process)
            r = results[(kind, clients)]
            print(f"{kind:12s} {clients:2d} clients: {r['tok_s']:7.1f} tok/s  p50 {r['p50']:.2f}s  p99 {r['p99']:.2f}s",
                  flush=True)
    print(f"\n{model.name}, {threads} threads, {args.requests} requests of up to {args.max_tokens} tokens, greedy")
    print("| clients (= slots) | llama-server tok/s | microkit tok/s | microkit / llama-server | "
          "llama-server p50 / p99 s | microkit p50 / p99 s |")
    print("|---|---|---|---|---|---|")
    for clients in sorted({c for _, c in results}):
        ref, ours = results[("llama-server", clients)], results[("microkit", clients)]
        print(f"| {clients} | {ref['tok_s']:.1f} | {ours['tok_s']:.1f} | {ours['tok_s'] / ref['tok_s']:.2f} | "
              f"{ref['p50']:.2f} / {ref['p99']:.2f} | {ours['p50']:.2f} / {ours['p99']:.2f} |")
    if ("microkit", 1) in results and ("microkit", 8) in results:
        one, eight = results[("microkit", 1)], results[("microkit", 8)]
        print(f"\n8 clients on 8 slots finish the {args.requests} requests {one['wall'] / eight['wall']:.2f}x faster "
              f"than one client on one slot ({eight['wall']:.1f} s vs {one['wall']:.1f} s)")


if __name__ == "__main__":
    main()
