"""Experts on one shared base against separate merged models: disk, memory, speed and whether each adapter-served
expert answers as its merged GGUF does. Takes finished `kit build` runs whose students share a base (LoRA).

    .venv/bin/python bench/shared_base.py RUN_A RUN_B [...] [--quant Q8_0] [--cases 40] [--parallel 4]

For each run: the adapter GGUF (llama.cpp's convert_lora_to_gguf.py, from runs/<task>/train/adapter) and the
student's base at `--quant` (made once into microkit's cache, no importance matrix); the merged GGUF is the run's
own export/model-<quant>.gguf. Each process loads the experts one way and answers the first `--cases` inputs of
each run's eval set (greedy, the bundle's JSON schema and copied fields); prints a table. Asserts nothing.

A quantized base plus an F16 adapter is not bit-equal to the quantized merged model (Q8_0(W) + BA against
Q8_0(W + BA)), so both are also compared with the run's unquantized merged model (`--reference F16`, its
export/model-F16.gguf) and scored against the eval set's gold answers (exact match): the adapter-served expert
should be as close to the unquantized model, and score as well, as the merged GGUF it replaces.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serve_cases(mode: str, bundles: list[str], cases: list[list[str]], parallel: int, out) -> None:
    """In a fresh process: load the experts (merged, or load_many on the shared base) and answer every case."""
    from runtime.expert import Expert

    began = time.perf_counter()
    if mode == "merged":
        experts = [Expert.load(b, parallel=parallel, verify=False) for b in bundles]
    else:
        experts = Expert.load_many(bundles, parallel=parallel, verify=False)
    loaded = time.perf_counter() - began
    answers = []
    began = time.perf_counter()
    for expert, inputs in zip(experts, cases):
        answers.append([json.dumps(a) if not isinstance(a, Exception) else f"error: {a}"
                        for a in expert.run_many(inputs, return_exceptions=True)])
    out.put({"answers": answers, "load_s": loaded, "answer_s": time.perf_counter() - began, "rss_mb": peak_rss_mb()})
    for expert in experts:
        expert.close()


def in_process(mode: str, bundles: list[str], cases: list[list[str]], parallel: int) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=serve_cases, args=(mode, bundles, cases, parallel, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def lora_bundle(run: Path, quant: str, out: Path) -> Path:
    """A bundle folder for the run's expert served from its adapter: the run's bundle manifest, the merged GGUF,
    the adapter GGUF and the shared base (hard-linked from the cache)."""
    from export.lora_gguf import adapter_gguf, adapter_type, base_gguf, link_or_copy
    from export.merge import adapter_base
    from kit.models.base_model import resolve_base
    from runtime.manifest import describe_file, read_manifest, write_manifest

    adapter = run / "train" / "adapter"
    base = resolve_base(adapter_base(adapter))
    out.mkdir(parents=True, exist_ok=True)
    merged = run / "export" / f"model-{quant}.gguf"
    base_file = base_gguf(base, quant)
    adapter_file = adapter_gguf(adapter, base, out, quant)
    for source, target in ((merged, out / merged.name), (base_file, out / f"base-{quant}.gguf")):
        if not target.exists():
            link_or_copy(source, target)
    manifest = read_manifest(run / "bundle")
    manifest.name = f"{manifest.name}-{run.parent.name}-{run.name}"
    manifest.files = [describe_file(out, out / merged.name, "gguf", quant),
                      describe_file(out, adapter_file, "gguf-adapter", adapter_type(quant)),
                      describe_file(out, out / f"base-{quant}.gguf", "gguf-base", quant)]
    manifest.lora_adapter = {"adapter": adapter_file.name, "base": f"base-{quant}.gguf"}
    write_manifest(out, manifest)
    return out


def reference_bundle(run: Path, quant: str, out: Path) -> Path | None:
    """A bundle folder holding only the run's merged GGUF at `quant` (None when the run did not make one)."""
    from export.lora_gguf import link_or_copy
    from runtime.manifest import describe_file, read_manifest, write_manifest

    merged = run / "export" / f"model-{quant}.gguf"
    if not merged.is_file():
        return None
    out.mkdir(parents=True, exist_ok=True)
    if not (out / merged.name).exists():
        link_or_copy(merged, out / merged.name)
    manifest = read_manifest(run / "bundle")
    manifest.files = [describe_file(out, out / merged.name, "gguf", quant)]
    manifest.lora_adapter = {}
    write_manifest(out, manifest)
    return out


def exact_share(answers: list[str], golds: list) -> float:
    from kit.evaluate.metrics import exact_match

    return 100 * sum(exact_match(a, g, "json") for a, g in zip(answers, golds)) / max(1, len(answers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--quant", default="Q8_0")
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--reference", default="F16", help="the unquantized merged GGUF both are compared with")
    parser.add_argument("--out", type=Path, default=Path("bench-runs/shared-base"))
    args = parser.parse_args()
    bundles = [str(lora_bundle(run, args.quant, args.out.resolve() / f"expert-{i}")) for i, run in enumerate(args.runs)]
    rows = [[json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()
             if line.strip()][:args.cases] for run in args.runs]
    cases = [[row["input"] for row in run_rows] for run_rows in rows]
    golds = [[row["gold"] for row in run_rows] for run_rows in rows]
    merged = in_process("merged", bundles, cases, args.parallel)
    shared = in_process("shared", bundles, cases, args.parallel)
    references = [reference_bundle(run, args.reference, args.out.resolve() / f"expert-{i}-{args.reference}")
                  for i, run in enumerate(args.runs)]
    reference = (in_process("merged", [str(b) for b in references], cases, args.parallel)
                 if all(references) else None)

    def same_as(mode: dict, other: dict) -> str:
        return " + ".join(f"{sum(a == b for a, b in zip(x, y))}/{len(x)}"
                          for x, y in zip(mode["answers"], other["answers"]))

    def exact(mode: dict) -> str:
        return " / ".join(f"{exact_share(x, g):.1f}" for x, g in zip(mode["answers"], golds))

    merged_disk = sum(Path(b, f"model-{args.quant}.gguf").stat().st_size for b in bundles)
    adapters_disk = sum(next(Path(b).glob("adapter-*.gguf")).stat().st_size for b in bundles)
    base_disk = Path(bundles[0], f"base-{args.quant}.gguf").stat().st_size
    n = len(bundles)
    print(f"\n{n} experts ({', '.join(str(r) for r in args.runs)}), {args.quant}, parallel {args.parallel}, "
          f"{sum(len(c) for c in cases)} eval inputs")
    ref = f"identical to merged {args.reference}"
    print(f"| | disk | peak RSS | load s | answer s | identical to merged {args.quant} | {ref} | exact match |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {n} merged {args.quant} GGUFs, one engine each | {merged_disk / 1e6:.0f} MB | {merged['rss_mb']:.0f} MB | "
          f"{merged['load_s']:.1f} | {merged['answer_s']:.1f} | (reference) | "
          f"{same_as(merged, reference) if reference else 'n/a'} | {exact(merged)} |")
    print(f"| one {args.quant} base + {n} LoRA adapters, one engine | {(base_disk + adapters_disk) / 1e6:.0f} MB "
          f"(base {base_disk / 1e6:.0f} + adapters {adapters_disk / 1e6:.1f}) | {shared['rss_mb']:.0f} MB | "
          f"{shared['load_s']:.1f} | {shared['answer_s']:.1f} | {same_as(shared, merged)} | "
          f"{same_as(shared, reference) if reference else 'n/a'} | {exact(shared)} |")
    if reference:
        print(f"| {n} merged {args.reference} GGUFs (unquantized reference) | | {reference['rss_mb']:.0f} MB | "
              f"{reference['load_s']:.1f} | {reference['answer_s']:.1f} | {same_as(reference, merged)} | | "
              f"{exact(reference)} |")


if __name__ == "__main__":
    main()
