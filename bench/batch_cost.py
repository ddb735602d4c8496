"""What a decode step of B tokens (one for each of B sequences) costs against a step of one token, on this machine:
the most that any server batching B clients can gain here, llama.cpp's `llama-batched-bench` measured through the
llama-cpp-python build the runtime uses.

    .venv/bin/python bench/batch_cost.py [MODEL ...] [--batches 1,2,4,8,16] [--steps 48] [--prompt 64] [--threads N]

MODEL: a model-store name or a .gguf path (default: the store's SmolLM2-135M, as shipped at Q8_0 and at the
other types given with --quants, made from the store's Hugging Face copy with llama.cpp's converter and
quantizer into bench-runs/batch-cost/). Each of B sequences first reads a `--prompt`-token prompt; then
`--steps` decode steps each feed one token per sequence (logits for every one, as serving samples each). Prints
a table: decode tokens/s at each B, the cost of a step against a single-sequence step, and B divided by that
cost: how much faster B clients can finish than one after another if nothing else (HTTP, sampling, prompt
reading) cost anything. Asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def store_quants(quants: list[str], out: Path) -> list[Path]:
    """The store's SmolLM2-135M converted to F16 by llama.cpp's converter, then quantized to each type."""
    from export.gguf import convert_to_gguf, quantize_gguf
    from kit.models.reference import resolve_model

    out.mkdir(parents=True, exist_ok=True)
    f16 = out / "smollm2-135m-F16.gguf"
    if not f16.is_file():
        convert_to_gguf(Path(resolve_model("smollm2-135m-instruct").hf()), f16, "F16")
    paths = []
    for quant in quants:
        path = out / f"smollm2-135m-{quant}.gguf"
        if not path.is_file():
            quantize_gguf(f16, path, quant)
        paths.append(path)
    return paths


def step_seconds(model_path: Path, batch: int, steps: int, prompt: int, threads: int) -> float:
    """Mean seconds of one decode step feeding one token to each of `batch` sequences."""
    import logging

    import llama_cpp
    import llama_cpp._logger  # noqa: F401  (routes llama.cpp's log through this logger)

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), llama_cpp.llama_model_default_params())
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = (prompt + steps + 8) * batch
    params.n_batch = params.n_ubatch = max(512, batch)
    params.n_seq_max = batch
    params.kv_unified = True
    params.n_threads = params.n_threads_batch = threads
    params.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model, params)
    lot = llama_cpp.llama_batch_init(max(prompt, batch), 0, 1)
    try:
        def decode(entries: list[tuple[int, int, int, bool]]) -> None:  # token, position, sequence, logits
            lot.n_tokens = len(entries)
            for i, (token, position, seq, logits) in enumerate(entries):
                lot.token[i], lot.pos[i], lot.n_seq_id[i], lot.logits[i] = token, position, 1, logits
                lot.seq_id[i][0] = seq
            if llama_cpp.llama_decode(ctx, lot) != 0:
                raise RuntimeError("llama_decode failed")

        for seq in range(batch):  # the prompts, one sequence at a time (not timed)
            decode([(100 + (seq * 7 + i) % 1000, i, seq, i == prompt - 1) for i in range(prompt)])
        decode([(200, prompt, seq, True) for seq in range(batch)])  # warm-up step
        began = time.perf_counter()
        for step in range(1, steps + 1):
            decode([(200 + (step + seq) % 500, prompt + step, seq, True) for seq in range(batch)])
        return (time.perf_counter() - began) / steps
    finally:
        llama_cpp.llama_batch_free(lot)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="model-store names or .gguf paths")
    parser.add_argument("--quants", default="Q8_0,Q4_0,F16", help="types of the default model")
    parser.add_argument("--batches", default="1,2,4,8,16")
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench-runs/batch-cost"))
    args = parser.parse_args()
    from runtime.backends.base import default_threads

    threads = args.threads or default_threads()
    if args.models:
        from kit.models.reference import resolve_model

        paths = [Path(m) if Path(m).is_file() else resolve_model(m).gguf() for m in args.models]
    else:
        paths = store_quants(args.quants.split(","), args.out)
    batches = [int(b) for b in args.batches.split(",")]
    print(f"{threads} threads, {args.prompt}-token prompts, {args.steps} decode steps per batch size")
    print("| model | B | step ms | decode tok/s | step cost (single steps) | B / cost |")
    print("|---|---|---|---|---|---|")
    for path in paths:
        single = None
        for batch in batches:
            seconds = step_seconds(path, batch, args.steps, args.prompt, threads)
            single = seconds if single is None or batch == 1 else single
            cost = seconds / single
            print(f"| {path.name} | {batch} | {seconds * 1000:.1f} | {batch / seconds:.1f} | {cost:.2f} | "
                  f"{batch / cost:.2f} |", flush=True)


if __name__ == "__main__":
    main()
