"""Runtime throughput: Expert vs bare llama-cpp-python, server vs bare, ONNX backend vs PyTorch eager.

    .venv/bin/python bench/runtime_throughput.py [--threads N] [--max-tokens 64] [--rounds 3]

Same GGUF (the store SmolLM2-135M, as a bundle with a manifest) / same HF weights, same chat prompts, greedy,
the same thread count everywhere. Each mode decodes in a fresh process of its own, one after another (the server
as `kit serve`, fed by a streaming HTTP client): llama.cpp's and torch's OpenMP thread teams slow each other
down when two modes share a process; a ratio is the median of the per-turn ratios. Each generation evaluates its prompt
from scratch (bare llama.cpp is reset too, as Expert does). Decode tokens/s = (completion tokens - 1) / (time
from first to last token), median over runs; a ratio is the median of the back-to-back pairs' ratios.
Start-up, first-token latency and peak RSS come from a fresh process per mode. The ONNX modes run the
export stage's shipped variants of the same weights: fp32, int8 (dynamic, down_proj kept float), int4; the genai
modes run onnxruntime-genai models of the same weights made by its model builder (fp32, int4, int8).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STORE_MODEL = "smollm2-135m-instruct"
PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a bicycle works, part by part.",
    "Describe a walk through a busy market in the morning, with many details.",
]
RATIOS = [("expert", "bare", 0.97), ("server", "bare", 0.90), ("onnx-fp32", "torch", 2.0), ("onnx-int8", "torch", 2.0),
          ("onnx-int4", "torch", 2.0), ("genai-fp32", "torch", 2.0), ("genai-int4", "torch", 2.0),
          ("genai-int8", "torch", 2.0), ("genai-int4", "bare", 0.0), ("genai-int8", "bare", 0.0)]


def messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def vm_hwm_mb(pid: int | str = "self") -> float:
    """Peak resident set of a process (VmHWM; ru_maxrss would carry the parent's peak over exec on Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed(pieces) -> tuple[float, float, str]:
    """(seconds to the first piece, seconds from first to last piece, text)."""
    start = time.perf_counter()
    first = None
    text = []
    for piece in pieces:
        if first is None:
            first = time.perf_counter()
        text.append(piece)
    end = time.perf_counter()
    first = first or end
    return first - start, end - first, "".join(text)


# -- the modes: each returns a function prompt -> (first token s, decode s, completion tokens) ---------------
def mode_expert(args):
    from runtime import Expert

    expert = Expert.load(args.bundle, n_ctx=2048, n_threads=args.threads)

    def generate(prompt: str, max_tokens: int):
        ttft, decode, text = timed(expert.stream(messages(prompt), max_tokens=max_tokens, temperature=0,
                                                cache_prompt=False))
        return ttft, decode, expert.backend.count_tokens(text)
    return generate


def mode_bare(args):
    import llama_cpp

    from runtime.chat_template import render_chat

    llm = llama_cpp.Llama(model_path=str(args.gguf), n_ctx=2048, n_threads=args.threads,
                          n_threads_batch=args.threads, verbose=False)
    template = llm.metadata["tokenizer.chat_template"]

    def generate(prompt: str, max_tokens: int):
        tokens = llm.tokenize(render_chat(template, messages(prompt)).encode(), add_bos=False, special=True)
        llm.reset()
        stream = llm.create_completion(tokens, max_tokens=max_tokens, temperature=0, stream=True)
        ttft, decode, text = timed(c["choices"][0]["text"] for c in stream)
        return ttft, decode, len(llm.tokenize(text.encode(), add_bos=False, special=True))
    return generate


def mode_server(args):
    import httpx

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "kit", "serve", str(args.bundle), "--port", str(port),
                               "--threads", str(args.threads), "--n-ctx", "2048"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    http = httpx.Client(timeout=600)
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"kit serve exited: {server.stderr.read()}")
        try:
            model = http.get(url + "/health").json()["model"]
            break
        except httpx.HTTPError:
            time.sleep(0.05)

    def generate(prompt: str, max_tokens: int):
        body = {"model": model, "messages": messages(prompt), "max_tokens": max_tokens, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}, "cache_prompt": False}
        start = time.perf_counter()
        first = end = None
        tokens = 0
        with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                elif chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                    first = time.perf_counter()
                if chunk["choices"] and chunk["choices"][0].get("finish_reason"):
                    end = time.perf_counter()
        return first - start, end - first, tokens

    generate.server = server
    return generate


def _chat_prompt(hf_dir: Path, prompt: str) -> str:
    from runtime.chat_template import render_chat

    return render_chat((hf_dir / "chat_template.jinja").read_text(), messages(prompt))


def _mode_onnx(args, model: Path):
    from runtime import Expert

    expert = Expert.load(model, n_ctx=2048, n_threads=args.threads)

    def generate(prompt: str, max_tokens: int):
        params = expert.params(max_tokens=max_tokens, temperature=0)
        ttft, decode, text = timed(expert.generate(_chat_prompt(args.hf, prompt), params))
        return ttft, decode, expert.backend.count_tokens(text)
    return generate


def mode_onnx_fp32(args):
    return _mode_onnx(args, args.onnx / "model.onnx")


def mode_onnx_int8(args):
    return _mode_onnx(args, args.onnx / "model_int8.onnx")


def mode_onnx_int4(args):
    return _mode_onnx(args, args.onnx / "model_int4.onnx")


def mode_genai_fp32(args):
    return _mode_onnx(args, args.genai / "genai-fp32")


def mode_genai_int4(args):
    return _mode_onnx(args, args.genai / "genai-int4")


def mode_genai_int8(args):
    return _mode_onnx(args, args.genai / "genai-int8")


def mode_torch(args):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.hf)
    model = AutoModelForCausalLM.from_pretrained(args.hf, dtype=torch.float32).eval()

    def generate(prompt: str, max_tokens: int):
        ids = tokenizer(_chat_prompt(args.hf, prompt), return_tensors="pt", add_special_tokens=False).input_ids
        with torch.inference_mode():
            start = time.perf_counter()
            model.generate(ids, max_new_tokens=1, do_sample=False)
            ttft = time.perf_counter() - start
            start = time.perf_counter()
            out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False)
            total = time.perf_counter() - start
        return ttft, max(total - ttft, 1e-9), out.shape[1] - ids.shape[1]
    return generate


MODES = {"bare": mode_bare, "expert": mode_expert, "server": mode_server, "onnx-fp32": mode_onnx_fp32,
         "onnx-int8": mode_onnx_int8, "onnx-int4": mode_onnx_int4, "genai-fp32": mode_genai_fp32,
         "genai-int4": mode_genai_int4, "genai-int8": mode_genai_int8, "torch": mode_torch}
# Each mode decodes in a process of its own: llama.cpp's OpenMP threads (the runtime's engine thread, bare
# llama-cpp-python on the main thread) and torch's slow each other down threefold when two share one process.
AB_GROUPS = [(mode,) for mode in MODES]


# -- workers (each in its own process) -----------------------------------------------------------------------
def worker_footprint(args) -> dict:
    """Fresh process: load, first token of one prompt, peak RSS."""
    started = time.perf_counter()
    generate = MODES[args.mode](args)
    loaded = time.perf_counter() - started
    ttft, _, _ = generate(PROMPTS[0], 1)
    server = getattr(generate, "server", None)
    figures = {"load_s": round(loaded, 3), "first_token_s": round(ttft, 4),
               "startup_s": round(time.perf_counter() - started, 3),
               "peak_rss_mb": round(vm_hwm_mb(server.pid if server else "self"), 1)}
    if server:
        server.terminate()
        server.wait(timeout=30)
    return figures


def worker_ab(args) -> dict:
    """Decode speed of a group of modes, back to back per prompt and round, in rotating order."""
    group = args.mode.split(",")
    generators = {mode: MODES[mode](args) for mode in group}
    for generate in generators.values():
        generate(PROMPTS[0], 4)  # warm-up
    turns: list[dict[str, float]] = []  # decode tokens/s of each mode, per (round, prompt)
    firsts: dict[str, list[float]] = {mode: [] for mode in group}
    for _ in range(args.rounds):
        for prompt in PROMPTS:
            shift = len(turns) % len(group)
            turn = {}
            for mode in group[shift:] + group[:shift]:
                ttft, decode, tokens = generators[mode](prompt, args.max_tokens)
                turn[mode] = max(tokens - 1, 0) / decode
                firsts[mode].append(ttft)
            turns.append(turn)
    for generate in generators.values():
        if getattr(generate, "server", None):
            generate.server.terminate()
    return {mode: {"decode_tps": round(statistics.median(t[mode] for t in turns), 2),
                   "first_token_median_s": round(statistics.median(firsts[mode]), 4),
                   "turns": [round(t[mode], 2) for t in turns]} for mode in group}


def paired_ratio(speeds: dict, a: str, b: str) -> float:
    """Median over turns (prompt x round, in the same order in both processes) of a/b."""
    return statistics.median(x / y for x, y in zip(speeds[a]["turns"], speeds[b]["turns"]))


# -- orchestration -----------------------------------------------------------------------------------------
def prepare(workdir: Path) -> dict[str, Path]:
    """The store GGUF as a bundle (manifest with hashes), its HF folder, fp32 / int8 / int4 ONNX exports of it."""
    from kit.core import settings
    from kit.models.store import ModelStore
    from runtime.manifest import Manifest, describe_file, write_manifest

    store = ModelStore()
    gguf = store.pull(STORE_MODEL)
    hf = store.pull_hf(STORE_MODEL)
    bundle = workdir / "bundle"
    bundle.mkdir()
    os.symlink(gguf, bundle / gguf.name)
    write_manifest(bundle, Manifest(name=STORE_MODEL, files=[describe_file(bundle, bundle / gguf.name, "gguf", "Q4_1")]))
    onnx = settings.microkit_home() / "bench" / f"{STORE_MODEL}-onnx"
    if not (onnx / "model.onnx").is_file():
        from optimum.exporters.onnx import main_export

        print(f"exporting {hf} to ONNX (once) ...", file=sys.stderr, flush=True)
        main_export(str(hf), str(onnx), task="text-generation-with-past")
    if not (onnx / "model_int8.onnx").is_file():
        from export.config import OnnxSettings
        from export.onnx_export import quantize_int8

        print("quantizing the ONNX export to int8 (once, as the export stage ships it) ...", file=sys.stderr, flush=True)
        quantize_int8(onnx / "model.onnx", OnnxSettings().int8_keep_float)
    if not (onnx / "model_int4.onnx").is_file():
        from export.onnx_export import quantize_int4

        print("quantizing the ONNX export to int4 (once) ...", file=sys.stderr, flush=True)
        quantize_int4(onnx / "model.onnx")
    from export.onnx_genai import make_genai

    genai = settings.microkit_home() / "bench" / f"{STORE_MODEL}-genai"
    print("building onnxruntime-genai models with its model builder (once) ...", file=sys.stderr, flush=True)
    make_genai(hf, genai, ["fp32", "int4", "int8"])
    return {"bundle": bundle, "gguf": gguf, "hf": hf, "onnx": onnx, "genai": genai}


def run_worker(kind: str, mode: str, paths: dict[str, Path], args) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--mode", mode, "--threads", str(args.threads),
               "--max-tokens", str(args.max_tokens), "--rounds", str(args.rounds)]
    command += [f"--{k}={v}" for k, v in paths.items()]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{kind} {mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", choices=["footprint", "ab"])
    parser.add_argument("--mode")
    for name in ("bundle", "gguf", "hf", "onnx", "genai"):
        parser.add_argument(f"--{name}", type=Path)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps((worker_footprint if args.worker == "footprint" else worker_ab)(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        paths = prepare(Path(tmp))
        footprints = {}
        for mode in MODES:
            footprints[mode] = run_worker("footprint", mode, paths, args)
            print(f"footprint {mode:9s} {footprints[mode]}", file=sys.stderr, flush=True)
        speeds = {}
        for group in AB_GROUPS:
            speeds.update(run_worker("ab", ",".join(group), paths, args))
            print(f"a/b {group} done", file=sys.stderr, flush=True)
    report(footprints, speeds, args)


def report(footprints: dict, speeds: dict, args) -> None:
    print(f"\nruntime throughput: {STORE_MODEL} (GGUF Q4_1; HF/ONNX dequantized fp32), {args.threads} thread(s), "
          f"{len(PROMPTS)} chat prompts x {args.rounds} rounds, max_tokens {args.max_tokens}, greedy")
    print(f"{'mode':10s} {'decode tok/s':>12s} {'first token s':>14s} {'load s':>8s} {'load+1st s':>11s} {'peak RSS MB':>12s}")
    for mode in MODES:
        s, f = speeds[mode], footprints[mode]
        print(f"{mode:10s} {s['decode_tps']:12.1f} {f['first_token_s']:14.3f} {f['load_s']:8.2f} {f['startup_s']:11.2f} "
              f"{f['peak_rss_mb']:12.0f}")
    print(f"start-up (fresh process): import runtime + verify hashes + load the 135M bundle + first token = "
          f"{footprints['expert']['startup_s']:.3f} s")
    for a, b, target in RATIOS:
        ratio = paired_ratio(speeds, a, b)
        print(f"{a + '/' + b:16s} decode ratio {ratio:5.2f}  (target >= {target}) {'ok' if ratio >= target else 'BELOW TARGET'}")


if __name__ == "__main__":
    main()
