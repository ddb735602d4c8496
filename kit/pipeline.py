"""`kit build`: generate -> train -> export -> eval in one run directory, then the bundle is finished and served.

The build is a loop over the stages. Each is run under the one stage contract (kit.core.stage), which skips a
stage whose manifest matches its config and inputs, so a killed build resumes and a changed train setting
reruns train and what follows only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from export.bundle_eval import attach_eval
from export.stage import EXPORT
from kit.core.errors import UserError
from kit.core.run_dir import RunDir
from kit.core.stage import Stage, StageManifest, run_stage
from kit.distill.generate import GENERATE
from kit.evaluate.probe import PROBE
from kit.evaluate.report import headline
from kit.evaluate.serve_check import first_eval_input, serve_check
from kit.evaluate.stage import EVALUATE
from kit.recipe.loader import load_seeds
from kit.recipe.schema import Recipe
from kit.recipe.stages import evaluate_config, export_config, generate_config, probe_config, train_config
from trainers.sft import TRAIN

STAGES = ("generate", "train", "probe", "export", "eval", "bundle")
LOCAL_TEACHERS = ("llama_cpp", "hf")  # teachers that decode in the build's own process
console = Console()


@dataclass
class StageResult:
    stage: str
    seconds: float
    figures: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


@dataclass(frozen=True)
class BuildStep:
    """One stage of the build with its config from the recipe, the options it runs with, and its summary line."""

    stage: Stage[Any]
    config: Any
    summary: Callable[[StageManifest, RunDir], str]
    options: dict[str, Any] = field(default_factory=dict)
    run: RunDir | None = None  # a round's own run directory (None: the build's)
    label: str = ""  # how the build names it ("generate (round 1/2)"); default: the stage's name
    fresh_process: bool = False  # run it in a process of its own (kit.core.fresh_process)


def build_steps(recipe: Recipe, run: RunDir, eval_teacher: bool = True, threads: int | None = None) -> list[BuildStep]:
    """The stages `kit build` runs, in order: generate and train once per round (with a probe after each when
    `data.rounds` > 1), then export and eval of the last round's student."""
    rounds = recipe.data.rounds
    # after a local teacher decoded in this process, training here ran 1.26x slower than in a process of its own
    local_teacher = recipe.teacher.backend in LOCAL_TEACHERS
    steps = []
    for number in range(1, rounds + 1):
        here = run.round(number, rounds)
        tag = f" (round {number}/{rounds})" if rounds > 1 else ""
        steps += [BuildStep(GENERATE, generate_config(recipe, run, number), _generate_summary, {"show_progress": True},
                            here, f"generate{tag}"),
                  BuildStep(TRAIN, train_config(recipe, run, number), _train_summary, {"show_progress": True}, here,
                            f"train{tag}", fresh_process=local_teacher)]
        if rounds > 1:
            steps.append(BuildStep(PROBE, probe_config(recipe, run, number), _probe_summary, {}, here, f"probe{tag}"))
    return steps + [
        BuildStep(EXPORT, export_config(recipe, run), _export_summary),
        BuildStep(EVALUATE, evaluate_config(recipe, include_teacher=eval_teacher), _eval_summary, {"threads": threads}),
    ]


def build(recipe: Recipe, run: RunDir, until: str = "bundle", eval_teacher: bool = True,
          threads: int | None = None, serve: bool = True) -> list[StageResult]:
    """Run every stage up to `until`; returns one result per stage that ran (or was found up to date).
    A finished bundle is then served once (`kit serve`, one request over HTTP) unless `serve` is False."""
    if until not in STAGES:
        raise UserError(f"unknown stage '{until}': use one of {', '.join(STAGES)}")
    steps = build_steps(recipe, run, eval_teacher, threads)
    # stop after the last step at or before `until` (a stage that runs once per round: the last round's)
    order = [STAGES.index(step.stage.name) for step in steps]
    last = max((i for i, o in enumerate(order) if o <= STAGES.index(until)), default=-1)
    steps = steps[: last + 1]
    results = []
    for step in steps:
        results.append(_timed(step.label or step.stage.name, lambda step=step: _run_step(step, step.run or run)))
    if until == "bundle":
        results.append(_timed("bundle", lambda: _finish_bundle(run)))
        if serve:
            results.append(_timed("serve", lambda: _serve(recipe, run)))
    return results


def _timed(name: str, work: Callable[[], tuple[dict[str, Any], str]]) -> StageResult:
    console.print(Rule(f"[bold]{name}[/bold]"))
    started = time.time()
    figures, summary = work()
    result = StageResult(name, time.time() - started, figures, summary)
    console.print(f"[green]{name} done[/green] in {result.seconds:.0f}s: {summary}")
    return result


def _run_step(step: BuildStep, run: RunDir) -> tuple[dict[str, Any], str]:
    manifest = run_stage(step.stage, step.config, run, fresh_process=step.fresh_process, **step.options)
    return manifest.figures, step.summary(manifest, run)


def _generate_summary(manifest: StageManifest, run: RunDir) -> str:
    f = manifest.figures
    return f"{f.get('accepted')} samples kept, acceptance {_pct(f.get('acceptance_rate'))}"


def _train_summary(manifest: StageManifest, run: RunDir) -> str:
    f = manifest.figures
    return (f"validation loss {_num(f.get('validation_loss_before'))} -> {_num(f.get('validation_loss_after'))}, "
            f"{_num(f.get('train_tokens_per_s'), 0)} train tokens/s")


def _probe_summary(manifest: StageManifest, run: RunDir) -> str:
    f = manifest.figures
    score = f.get("validation_score")
    return (f"{f.get('failed')} of {f.get('probed')} probes failed; validation {f.get('metric')} "
            f"{_pct(score) if score is not None else '?'}")


def _export_summary(manifest: StageManifest, run: RunDir) -> str:
    f = manifest.figures
    return f"shipped {', '.join(Path(p).name for p in f.get('shipped', []))}; failed: {f.get('failed') or 'none'}"


def _eval_summary(manifest: StageManifest, run: RunDir) -> str:
    return headline(run)


def _finish_bundle(run: RunDir) -> tuple[dict[str, Any], str]:
    attach_eval(run.bundle, run.eval / "report.json", run.eval / "report.md")
    return {}, f"{run.bundle} (manifest hashes refreshed, model card carries the eval table)"


def _serve(recipe: Recipe, run: RunDir) -> tuple[dict[str, Any], str]:
    check = serve_check(run.bundle, first_eval_input(recipe.eval.file, load_seeds(recipe)),
                        max_tokens=recipe.export.generation.max_tokens)
    figures = {"request": check.request, "reply": check.reply, "seconds": round(check.seconds, 3),
               "startup_s": round(check.startup_s, 2)}
    return figures, f"kit serve answered {check.request!r} with {check.reply!r} in {check.seconds:.2f}s"


def summary_table(results: list[StageResult]) -> Table:
    table = Table("stage", "time", "key figures", title="kit build")
    for result in results:
        table.add_row(result.stage, f"{result.seconds:.0f}s", result.summary)
    return table


def _pct(value: Any) -> str:
    return f"{100 * value:.0f}%" if isinstance(value, (int, float)) else "?"


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "?"
