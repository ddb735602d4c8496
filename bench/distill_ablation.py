"""Distillation levers, each on its own and all together, at the same teacher budget: `kit build` of one
recipe per variant (a copy of the recipe with the lever's settings, in the recipe's own folder so its
relative paths hold), then the shipped artifact's score on the hand-written eval set and the time of each stage.

    .venv/bin/python bench/distill_ablation.py examples/tool-calling/recipe.yaml [--variants base,rounds,distinct,vote,all]
        [--runs bench-runs] [--no-teacher-eval]

Variants `student-0.5b` and `full-finetune` build the recipe as written with that preset (kit/recipe/presets/):
the stronger student (Qwen2.5-Coder-0.5B with logit distillation from the 1.5B teacher), or full fine-tuning.

Each build is a full `kit build` (about 25-30 minutes for the examples on 2 CPU cores). Builds of one variant
resume, so a killed run costs only its unfinished stage. Prints a markdown table; asserts nothing.
Builds vary by about +-5 points: compare levers over the same data or over more than one build.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

# each variant switches levers on (the others off): failure-driven rounds, a cap on repeated answers, a vote
LEVERS: dict[str, set[str]] = {
    "base": set(),
    "rounds": {"rounds"},
    "distinct": {"distinct"},
    "vote": {"vote"},
    "all": {"rounds", "distinct", "vote"},
}
PRESET_VARIANTS = ("student-0.5b", "full-finetune")  # the recipe as written, with `kit build --preset NAME`


def variant_recipe(recipe: Path, name: str) -> Path:
    """A copy of `recipe` with the variant's levers on and the others off, next to it, under its own task name."""
    data = yaml.safe_load(recipe.read_text())
    levers = LEVERS[name]
    section = data.setdefault("data", {})
    section["rounds"] = max(2, section.get("rounds", 1)) if "rounds" in levers else 1
    section["answers_per_input"] = 3 if "vote" in levers else 1
    if "vote" in levers:
        data.setdefault("teacher", {}).setdefault("answer_temperature", 0.5)
    verifiers = [v for v in data.setdefault("critic", {}).get("verifiers", []) if v.get("type") != "distinct_outputs"]
    if "distinct" in levers:
        verifiers.insert(max(0, len(verifiers) - 1), {"type": "distinct_outputs", "max_per_output": 2})
    data["critic"]["verifiers"] = verifiers
    data["task"]["name"] = f"{data['task']['name']}-{name}"
    out = recipe.with_name(f".ablation-{name}.yaml")
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def stage_seconds(run: Path) -> dict[str, float]:
    """Seconds per stage from the manifests (every round's generate and train summed)."""
    totals: dict[str, float] = {}
    for manifest in run.rglob("manifest.json"):
        if manifest.parent.parent.name == "bundle" or manifest.parent.name == "bundle":
            continue
        record = json.loads(manifest.read_text())
        if "stage" in record and record.get("started"):
            totals[record["stage"]] = totals.get(record["stage"], 0.0) + record["finished"] - record["started"]
    return totals


def shipped_score(run: Path) -> tuple[str, dict[str, float]]:
    report = json.loads((run / "eval" / "report.json").read_text())
    metric = report["primary_metric"]
    return metric, {name: target["metrics"][metric] for name, target in report["targets"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--variants", default="base,rounds,distinct,vote,all")
    parser.add_argument("--runs", type=Path, default=Path("bench-runs"))
    parser.add_argument("--no-teacher-eval", action="store_true")
    args = parser.parse_args()
    rows = []
    for name in args.variants.split(","):
        if name not in LEVERS and name not in PRESET_VARIANTS:
            sys.exit(f"unknown variant {name}: use {', '.join([*LEVERS, *PRESET_VARIANTS])}")
        path = args.recipe if name in PRESET_VARIANTS else variant_recipe(args.recipe, name)
        command = [sys.executable, "-m", "kit", "build", str(path), "--runs", str(args.runs), "--no-serve-check"]
        if name in PRESET_VARIANTS:
            command += ["--preset", name]
        if args.no_teacher_eval:
            command.append("--no-teacher-eval")
        print(f"==> {name}: {' '.join(command)}", flush=True)
        subprocess.run(command, check=True)
        task = yaml.safe_load(path.read_text())["task"]["name"] + (f"-{name}" if name in PRESET_VARIANTS else "")
        run = args.runs / task
        metric, scores = shipped_score(run)
        rows.append((name, metric, scores, stage_seconds(run)))
    ship = next((k for k in rows[0][2] if k.startswith("gguf-Q8")), None) or next(k for k in rows[0][2] if k.startswith("gguf"))
    print(f"\n| lever | {rows[0][1]} shipped ({ship}) | F16 | Q4_K_M | teacher | share of teacher | "
          "generate s | train s | probe s | total s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, _, scores, seconds in rows:
        teacher = scores.get("teacher")
        share = f"{100 * scores[ship] / teacher:.0f}%" if teacher else "-"
        cells = [f"{100 * scores.get(k, float('nan')):.1f}" for k in (ship, "gguf-F16", "gguf-Q4_K_M")]
        print(f"| {name} | {' | '.join(cells)} | {100 * teacher:.1f} | {share} | " if teacher else
              f"| {name} | {' | '.join(cells)} | - | - | ", end="")
        print(" | ".join(f"{seconds.get(s, 0):.0f}" for s in ("generate", "train", "probe")) +
              f" | {sum(seconds.values()):.0f} |")


if __name__ == "__main__":
    main()
