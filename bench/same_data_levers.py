"""Training levers compared on the same distilled data: every variant trains from scratch, in one pass, on the
samples of one finished `kit build` (all of its rounds, the same validation split), then exports and scores
the shipped GGUF on the hand-written eval set. Builds of fresh data differ by about +-5 points; on the same
data a difference is the lever's.

    .venv/bin/python bench/same_data_levers.py examples/tool-calling/recipe.yaml --source runs/tool-calling \
        [--variants one-pass,swaps-2,swaps-4,full,system-prompt] [--runs bench-runs/levers]

Each variant is a copy of the recipe (next to it, so relative paths hold) with `data.rounds: 1`, the source's
sample count as its target (so the teacher writes nothing new), only the shipped GGUF type and no ONNX, plus the
variant's own settings; the merged model is not scored. The source's eval predictions of base student and teacher are reused. Prints a markdown
table (shipped score, share of the teacher, per answer kind when the answers are JSON objects, train time and
rows); asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import yaml

# the recipe's settings each variant changes (section -> key -> value); swap variants train fewer epochs over
# their larger training split, so every variant sees about as many rows (and takes about as long)
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "one-pass": {},
    "swaps-2": {"data": {"value_swaps": 2}, "train": {"epochs": 2}},
    "swaps-4": {"data": {"value_swaps": 4}, "train": {"epochs": 1}},
    "swaps-2-long": {"data": {"value_swaps": 2}},
    "full": {"train": {"method": "full", "learning_rate": 5e-5}},
    "full-1e-4": {"train": {"method": "full", "learning_rate": 1e-4}},
    "full-2e-5": {"train": {"method": "full", "learning_rate": 2e-5}},
    "system-prompt": {"student": {"system_prompt": None}},
    "no-derived": {"data": {"derived_values": False}},
    "keep-best": {"train": {"keep": "best", "early_stopping_patience": 2}},
    "keep-last": {"train": {"keep": "last", "early_stopping_patience": 0}},
    "keep-last-8": {"train": {"keep": "last", "early_stopping_patience": 0, "epochs": 8}},
    "keep-last-12": {"train": {"keep": "last", "early_stopping_patience": 0, "epochs": 12}},
    "keep-last-lr5e-4-8": {"train": {"keep": "last", "early_stopping_patience": 0, "epochs": 8,
                                     "learning_rate": 5e-4}},
    # the recipe as it is, another training seed (LoRA init, row order): how far training alone moves the score
    "train-seed-1": {"train": {"seed": 1}},
    "train-seed-2": {"train": {"seed": 2}},
    # the source's samples whose least sure answer token is below a higher `confident` min_p left out (no refill:
    # the variant trains on fewer rows)
    "confident-0.7": {},
    "confident-0.8": {},
    # training numerics: fp32 or bf16 whatever the device (auto: bf16 on CUDA, fp32 on CPU), LoRA without dropout
    "fp32": {"train": {"precision": "fp32"}},
    "bf16": {"train": {"precision": "bf16"}},
    "dropout-0": {"train": {"lora": {"dropout": 0.0}}},
    # the first 200 of the source's samples (plan order): what the samples past 200 added
    "first-200": {},
    "first-150": {},
    # distilling step-by-step on a source built with data.reasoning: true (the teacher's reasoning in the data):
    # the reasoning as a second training task (train.rationales), or not, at about the same training compute
    "rationales-4": {"train": {"rationales": True, "epochs": 4}},
    "rationales-8": {"train": {"rationales": True, "epochs": 8}},
    "answers-only-8": {"train": {"rationales": False, "epochs": 8}},
    # a second expert on the same base and data (another training seed) that also keeps its F16 GGUF: with the
    # source, the pair bench/shared_base.py serves from one base and compares with the unquantized models
    "second-expert": {"train": {"seed": 1}, "export": {"gguf_types": ["F16", "Q8_0"]}},
}
# variant -> which of the source's samples it keeps (every one, for variants not named here)
SAMPLE_FILTERS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "confident-0.7": lambda row: row.get("least_p", 1.0) >= 0.7,
    "confident-0.8": lambda row: row.get("least_p", 1.0) >= 0.8,
    "first-200": lambda row: row["index"] < 200,
    "first-150": lambda row: row["index"] < 150,
}


def all_samples(source: Path) -> list[dict[str, Any]]:
    """Every accepted sample of the source build: each round's, then the last round's."""
    files = sorted(source.glob("rounds/*/data/samples.jsonl")) + [source / "data" / "samples.jsonl"]
    rows: list[dict[str, Any]] = []
    for path in files:
        if path.is_file():
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for index, row in enumerate(rows):  # one plan index each, as in one store
        row["index"] = index
    return rows


def variant_recipe(recipe: Path, name: str, overrides: dict[str, dict[str, Any]], samples: int,
                   epochs: float | None) -> Path:
    data = yaml.safe_load(recipe.read_text())
    data["task"]["name"] = f"{data['task']['name']}-{name}"
    data.setdefault("data", {}).update(rounds=1, target_samples=samples)
    export = data.setdefault("export", {})
    ship = export.get("ship") or export.get("gguf_types", ["Q8_0"])[:1]
    export |= {"gguf_types": list(ship), "ship": list(ship), "onnx": {"enabled": False}}
    data.setdefault("eval", {})["merged"] = False
    if epochs is not None:
        data.setdefault("train", {})["epochs"] = epochs
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    out = recipe.with_name(f".levers-{name}.yaml")
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def prepare(run: Path, source: Path, samples: list[dict[str, Any]]) -> None:
    """The variant's run directory holds the source's samples (and its cached base and teacher predictions)."""
    (run / "data").mkdir(parents=True, exist_ok=True)
    target = run / "data" / "samples.jsonl"
    if not target.exists():
        target.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    cache = source / "eval" / "target_cache"
    if cache.is_dir() and not (run / "eval" / "target_cache").exists():
        shutil.copytree(cache, run / "eval" / "target_cache")


def kind_of(gold: Any) -> str:
    """What an answer is about: the first string value of a JSON object (a tool name), else one bucket."""
    if isinstance(gold, dict):
        return next((v for v in gold.values() if isinstance(v, str)), "-")
    return "-"


def per_kind(run: Path, target: str) -> dict[str, tuple[int, int]]:
    from kit.evaluate.metrics import exact_match

    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for line in (run / "eval" / "predictions.jsonl").read_text().splitlines():
        row = json.loads(line)
        kind = kind_of(row["gold"])
        counts[kind][0] += int(exact_match(row[target], row["gold"], "json")) if target in row else 0
        counts[kind][1] += 1
    return {k: (v[0], v[1]) for k, v in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--source", type=Path, required=True, help="run directory of a finished `kit build`")
    parser.add_argument("--variants", default="one-pass,swaps-2")
    parser.add_argument("--runs", type=Path, default=Path("bench-runs/levers"))
    parser.add_argument("--epochs", type=float, default=None, help="train.epochs for every variant")
    args = parser.parse_args()
    samples = all_samples(args.source)
    source_report = json.loads((args.source / "eval" / "report.json").read_text())
    teacher = source_report["targets"].get("teacher", {}).get("metrics", {})
    rows = []
    for name in args.variants.split(","):
        if name not in VARIANTS:
            sys.exit(f"unknown variant {name}: use {', '.join(VARIANTS)}")
        kept = [dict(row, index=i) for i, row in enumerate(r for r in samples if SAMPLE_FILTERS.get(name, bool)(r))]
        path = variant_recipe(args.recipe, name, VARIANTS[name], len(kept), args.epochs)
        task = yaml.safe_load(path.read_text())["task"]["name"]
        run = args.runs / task
        prepare(run, args.source, kept)
        command = [sys.executable, "-m", "kit", "build", str(path), "--runs", str(args.runs), "--no-serve-check"]
        print(f"==> {name}: {' '.join(command)}", flush=True)
        subprocess.run(command, check=True)
        report = json.loads((run / "eval" / "report.json").read_text())
        metric = report["primary_metric"]
        ship = yaml.safe_load(path.read_text())["export"]["ship"][0]
        shipped = f"gguf-{ship}" if f"gguf-{ship}" in report["targets"] else next(
            t for t in report["targets"] if t.startswith("gguf-"))
        train = json.loads((run / "train" / "manifest.json").read_text())
        stats = json.loads((run / "data" / "stats.json").read_text())
        generate = json.loads((run / "data" / "manifest.json").read_text())
        rows.append({"name": name, "metric": metric, "score": report["targets"][shipped]["metrics"][metric],
                     "shipped": shipped, "kinds": per_kind(run, shipped),
                     "train_s": train["finished"] - train["started"],
                     "swaps": stats.get("value_swaps", {}).get("kept", 0),
                     "rows": generate["figures"]["split"]["train"]})
    teacher_score = teacher.get(rows[0]["metric"]) if rows else None
    kinds = sorted({k for r in rows for k in r["kinds"]})
    print(f"\n{len(samples)} samples from {args.source}; teacher {rows[0]['metric']} "
          f"{100 * teacher_score:.1f}" if teacher_score else "")
    print(f"| variant | {rows[0]['shipped']} | share of teacher | train rows (swapped) | train s | "
          + " | ".join(kinds) + " |")
    print("|---|---|---|---|---|" + "---|" * len(kinds))
    for r in rows:
        share = f"{100 * r['score'] / teacher_score:.0f}%" if teacher_score else "-"
        cells = " | ".join(f"{r['kinds'].get(k, (0, 0))[0]}/{r['kinds'].get(k, (0, 0))[1]}" for k in kinds)
        print(f"| {r['name']} | {100 * r['score']:.1f} | {share} | {r['rows']} ({r['swaps']}) | {r['train_s']:.0f} | {cells} |")


if __name__ == "__main__":
    main()
