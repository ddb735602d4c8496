"""Chaos build: `kit build` killed with SIGKILL at K random moments spread over its stages, rerun until it
finishes, then compared with an uninterrupted build from the same teacher cache.

    .venv/bin/python bench/chaos_build.py [--kills 10] [--stages generate,train,export,eval,bundle] [--seed 0] \
        [--workdir /tmp/microkit-chaos]

The recipe is a shrunken one (the model-store SmolLM2 as a local llama.cpp teacher and as the student, 12
samples, a few training steps with a checkpoint every 2, GGUF and ONNX export, a 3-question eval set). The kills
are spread evenly over the stages, in build order: each waits until its stage has begun (generation: a sample
kept; training: a new checkpoint written), then a random 0.2-3 s more (the bundle step, a manifest rewrite:
none), and kills the whole process group; a stage that finished first takes the kill in the next one. After the kills the build runs to the end. The reference build then starts from a copy of
the chaos build's teacher cache and runs once, uninterrupted. Prints

    K kills, L samples lost, D duplicated, R requests repeated

and checks, each PASS or FAIL: every sample accepted before a kill is still there, ids unique, the accepted
samples equal the reference's (ids and content), no answer the cache held was paid for again, training resumed
from a checkpoint (when a kill hit it after one), the trained weights equal the reference's bit for bit, the
bundle verifies, and the eval scores equal the reference's. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASK = "capital-finder"
sys.path.insert(0, str(ROOT))
from tests.test_pipeline import EVAL, RECIPE as PIPELINE_RECIPE  # noqa: E402 - the test suite's shrunken recipe

# the pipeline test's recipe, trained for 8 steps (checkpoints at 2, 4, 6) so that a kill can land between two; its
# teacher decodes 4 requests together (generation writes results in plan order, so which of two near-duplicates
# the critic keeps does not depend on which answer comes back first)
RECIPE = PIPELINE_RECIPE.replace("max_steps: 4", "max_steps: 8")
STAGE_FOLDERS = {"generate": "data", "train": "train", "export": "export", "eval": "eval", "bundle": "bundle"}


def write_recipe(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(RECIPE)
    (folder / "eval.jsonl").write_text("".join(json.dumps({"input": q, "output": {"capital": a}}) + "\n"
                                               for q, a in EVAL))
    return folder / "recipe.yaml"


def build_command(recipe: Path, runs: Path) -> list[str]:
    return [sys.executable, "-m", "kit", "build", str(recipe), "--runs", str(runs), "--threads", "2",
            "--no-serve-check"]


def running_stage(run: Path) -> str | None:
    """The first stage without a stage manifest (the one a running build is in)."""
    for stage, folder in STAGE_FOLDERS.items():
        if stage == "bundle":  # the build's last step writes the eval table into the bundle's model card
            card = run / "bundle" / "README.md"
            return None if card.is_file() and "## Evaluation" in card.read_text() else "bundle"
        if not (run / folder / "manifest.json").is_file():
            return stage
    return None


def checkpoint_steps(run: Path) -> list[int]:
    from trainers.checkpoints import last_complete_checkpoint

    last = last_complete_checkpoint(run / "train" / "checkpoints")
    return [int(last.name.rsplit("-", 1)[1])] if last else []


def accepted_ids(run: Path) -> list[str]:
    path = run / "data" / "samples.jsonl"
    if not path.is_file():
        return []
    ids = []
    for line in path.read_text().splitlines():
        try:
            ids.append(json.loads(line)["id"])
        except (ValueError, KeyError):
            pass  # a torn last line: the store cuts it when it opens the file again
    return ids


def started(run: Path, stage: str, checkpoint_before: int) -> bool:
    """Whether the build has begun the work of `stage` (or gone past it)."""
    if stage == "generate":  # the teacher has answered: samples are being kept
        return bool(accepted_ids(run)) or (run / "data" / "manifest.json").exists()
    if stage == "train":  # this run wrote a checkpoint: a kill now tests resuming from it
        return max(checkpoint_steps(run), default=0) > checkpoint_before or (run / "train" / "manifest.json").exists()
    marks = {"export": run / "export", "eval": run / "eval", "bundle": run / "eval" / "manifest.json"}
    return marks[stage].exists()


def chaos(recipe: Path, runs: Path, kills: int, stages: list[str], rng: random.Random, log) -> list[dict]:
    """Run the build, killing it `kills` times, the kills aimed at the stages in build order (spread evenly);
    then let it finish. One record per kill: the stage it aimed at, the stage it hit, what was kept."""
    run = runs / TASK
    order = list(STAGE_FOLDERS)
    aims = sorted((stages[k % len(stages)] for k in range(kills)), key=order.index)
    records: list[dict] = []
    for k, aim in enumerate(aims):
        checkpoint_before = max(checkpoint_steps(run), default=0)
        process = subprocess.Popen(build_command(recipe, runs), cwd=ROOT, stdout=log, stderr=log,
                                   start_new_session=True)
        while process.poll() is None and not started(run, aim, checkpoint_before):
            time.sleep(0.01)
        # the bundle step takes a moment: it is hit at once; other stages at a random moment inside them
        time.sleep(0.0 if aim == "bundle" else rng.uniform(0.2, 3.0))
        stage = running_stage(run) or "after the bundle"
        if process.poll() is not None:
            records.append({"aim": aim, "stage": "finished first", "accepted_ids": accepted_ids(run),
                            "checkpoint": 0})
            print(f"kill {k + 1}: aimed at {aim}, but the build finished first", flush=True)
            continue
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        records.append({"aim": aim, "stage": stage, "accepted_ids": accepted_ids(run),
                        "checkpoint": max(checkpoint_steps(run), default=0)})
        print(f"kill {k + 1}: aimed at {aim}, hit {stage}; {len(records[-1]['accepted_ids'])} samples kept",
              flush=True)
    final = subprocess.run(build_command(recipe, runs), cwd=ROOT, stdout=log, stderr=log)
    if final.returncode != 0:
        raise SystemExit(f"the build did not finish after the kills (exit {final.returncode}); see the log")
    return records


def samples(run: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (run / "data" / "samples.jsonl").read_text().splitlines() if line.strip()]
    return {row["id"]: {k: row[k] for k in ("input", "output", "index")} for row in rows}


def same_weights(run: Path, reference: Path) -> bool:
    """The trained weights (the LoRA adapter, or a full fine-tune's model) equal the reference's bit for bit."""
    from safetensors.numpy import load_file

    files = sorted(p.relative_to(run) for p in (run / "train").rglob("*.safetensors") if "checkpoints" not in p.parts)
    if not files:
        return False
    for name in files:
        if not (reference / name).is_file():
            return False
        ours, theirs = load_file(run / name), load_file(reference / name)
        if ours.keys() != theirs.keys() or any(not (ours[k] == theirs[k]).all() for k in ours):
            return False
    return True


def scores(run: Path) -> dict[str, dict]:
    report = json.loads((run / "eval" / "report.json").read_text())
    return {name: {k: round(v, 4) for k, v in target["metrics"].items() if isinstance(v, (int, float))}
            for name, target in report["targets"].items() if name not in ("teacher",)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--stages", default="generate,train,export,eval,bundle")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/microkit-chaos"))
    parser.add_argument("--no-score-check", action="store_true",
                        help="report the eval scores of both builds without requiring them equal")
    args = parser.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    if not stages or set(stages) - set(STAGE_FOLDERS):
        raise SystemExit(f"--stages takes a comma-separated list of {', '.join(STAGE_FOLDERS)}")

    shutil.rmtree(args.workdir, ignore_errors=True)
    recipe = write_recipe(args.workdir)
    chaos_runs, reference_runs = args.workdir / "chaos", args.workdir / "reference"
    started = time.time()
    with open(args.workdir / "build.log", "w") as log:
        records = chaos(recipe, chaos_runs, args.kills, stages, random.Random(args.seed), log)
        chaos_seconds = time.time() - started
        (reference_runs / TASK / "data").mkdir(parents=True)
        shutil.copy(chaos_runs / TASK / "data" / "teacher_cache.sqlite", reference_runs / TASK / "data")
        reference = subprocess.run(build_command(recipe, reference_runs), cwd=ROOT, stdout=log, stderr=log)
    if reference.returncode != 0:
        raise SystemExit("the reference build failed; see the log")
    run, ref = chaos_runs / TASK, reference_runs / TASK

    from kit.distill.teachers.cache import RequestCache
    from runtime.bundle import verify_files
    from runtime.manifest import read_manifest

    final = samples(run)
    kept_before = {i for r in records for i in r.get("accepted_ids", [])}
    lost = len(kept_before - set(final))
    ids = [json.loads(line)["id"] for line in (run / "data" / "samples.jsonl").read_text().splitlines() if line.strip()]
    duplicated = len(ids) - len(set(ids))
    cache = RequestCache(run / "data" / "teacher_cache.sqlite")
    repeated = cache.repeated()
    cache.close()
    metrics = json.loads((run / "train" / "metrics.json").read_text())
    # the last kill in training that found a complete checkpoint: the finishing run must resume from it or later
    resumable = max((r["checkpoint"] for r in records if r["stage"] == "train"), default=0)
    try:
        verify_files(run / "bundle", read_manifest(run / "bundle"))
        verified = True
    except Exception as err:  # noqa: BLE001 - reported as a failed check
        verified, why = False, err
    kills = sum(1 for r in records if r["stage"] != "finished first")
    order = [*STAGE_FOLDERS, "after the bundle"]
    hit = sorted({r["stage"] for r in records if r["stage"] in order}, key=order.index)
    print(f"\n{kills} kills (stages hit: {', '.join(hit)}), {lost} samples lost, {duplicated} duplicated, "
          f"{repeated} requests repeated; chaos build {chaos_seconds:.0f} s with restarts\n")
    chaos_scores, reference_scores = scores(run), scores(ref)
    checks = [
        ("every sample accepted before a kill is kept", lost == 0),
        ("no sample id twice", duplicated == 0),
        ("accepted samples equal the uninterrupted build's (ids and content)", final == samples(ref)),
        ("no answer the cache held was paid for again", repeated == 0),
        (f"training resumed from its last checkpoint (step {metrics.get('resumed_from_step')}; "
         f"step {resumable} was complete at the last kill in training)",
         (metrics.get("resumed_from_step") or 0) >= resumable),
        ("the trained weights equal the uninterrupted build's, bit for bit", same_weights(run, ref)),
        ("the bundle verifies", verified),
    ]
    if not args.no_score_check:
        checks.append(("eval scores equal the uninterrupted build's", chaos_scores == reference_scores))
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if not verified:
        print(f"  bundle: {why}")
    if chaos_scores != reference_scores:
        print(f"  scores differ:\n  chaos {chaos_scores}\n  reference {reference_scores}")
    sys.exit(0 if all(ok for _, ok in checks) else 1)


if __name__ == "__main__":
    main()
