"""`kit build`: generate -> train -> export -> eval -> bundle in one run directory.

Every stage skips itself when its manifest matches its inputs and config, so a killed build resumes and a
changed train setting reruns train and what follows only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from kit.errors import UserError
from kit.recipe import Recipe
from kit.run_dir import RunDir

STAGES = ("generate", "train", "export", "eval", "bundle")
console = Console()


@dataclass
class StageResult:
    stage: str
    seconds: float
    figures: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


def build(recipe: Recipe, run: RunDir, until: str = "bundle", eval_teacher: bool = True,
          threads: int | None = None, serve: bool = True) -> list[StageResult]:
    """Run every stage up to `until`; returns one result per stage that ran (or was found up to date).
    A finished bundle is then served once (`kit serve`, one request over HTTP) unless `serve` is False."""
    if until not in STAGES:
        raise UserError(f"unknown stage '{until}': use one of {', '.join(STAGES)}")
    steps: dict[str, Callable[[], tuple[dict[str, Any], str]]] = {
        "generate": lambda: _generate(recipe, run),
        "train": lambda: _train(recipe, run),
        "export": lambda: _export(recipe, run),
        "eval": lambda: _eval(recipe, run, eval_teacher, threads),
        "bundle": lambda: _bundle(recipe, run),
    }
    if until == "bundle" and serve:
        steps["serve"] = lambda: _serve(recipe, run)
    results = []
    for name in [*STAGES[: STAGES.index(until) + 1], *(["serve"] if "serve" in steps else [])]:
        console.print(Rule(f"[bold]{name}[/bold]"))
        started = time.time()
        figures, summary = steps[name]()
        results.append(StageResult(name, time.time() - started, figures, summary))
        console.print(f"[green]{name} done[/green] in {results[-1].seconds:.0f}s: {summary}")
    return results


def _generate(recipe: Recipe, run: RunDir) -> tuple[dict[str, Any], str]:
    from kit import generate

    manifest = generate.run(recipe, run, show_progress=True)
    f = manifest.figures
    return f, f"{f.get('accepted')} samples kept, acceptance {_pct(f.get('acceptance_rate'))}"


def _train(recipe: Recipe, run: RunDir) -> tuple[dict[str, Any], str]:
    from trainers.sft import run as train

    f = train(recipe, run, show_progress=True).figures
    return f, (f"validation loss {_num(f.get('validation_loss_before'))} -> {_num(f.get('validation_loss_after'))}, "
               f"{_num(f.get('train_tokens_per_s'), 0)} train tokens/s")


def bundle_info(recipe: Recipe, evals: dict[str, Any] | None = None):
    from export.bundle import BundleInfo

    return BundleInfo(name=recipe.task.name, task=recipe.task.description,
                      system_prompt=recipe.student_system_prompt, output_format=recipe.output.format,
                      output_schema=recipe.output.resolved_schema(), eval=evals or {})


def _export(recipe: Recipe, run: RunDir) -> tuple[dict[str, Any], str]:
    from export.stage import run as export

    manifest = export(recipe.export, run.export, run.bundle, bundle_info(recipe), adapter=run.adapter,
                      base=recipe.student.model, dataset=run.dataset)
    f = manifest.figures
    return f, f"shipped {', '.join(Path(p).name for p in f.get('shipped', []))}; failed: {f.get('failed') or 'none'}"


def _eval(recipe: Recipe, run: RunDir, eval_teacher: bool, threads: int | None) -> tuple[dict[str, Any], str]:
    from kit import evaluate

    manifest = evaluate.run_if_needed(recipe, run, evaluate.default_targets(recipe, run, eval_teacher), threads)
    return manifest.figures, evaluate.headline(run)


def _bundle(recipe: Recipe, run: RunDir) -> tuple[dict[str, Any], str]:
    from export.bundle_eval import attach_eval

    attach_eval(run.bundle, run.eval / "report.json", run.eval / "report.md")
    return {}, f"{run.bundle} (manifest hashes refreshed, model card carries the eval table)"


def _serve(recipe: Recipe, run: RunDir) -> tuple[dict[str, Any], str]:
    from kit.recipe_loader import load_seeds
    from kit.serve_check import first_eval_input, serve_check

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
