"""`kit eval`: maps flags onto the eval stage; the logic lives in kit.evaluate.stage."""

from __future__ import annotations

from typing import Optional
from pathlib import Path

import typer
from rich.console import Console

from kit.core.run_dir import RunDir
from kit.evaluate.stage import run as run_eval
from kit.pipeline import build as run_build
from kit.pipeline import summary_table
from kit.cli.options import PRESET
from kit.recipe.loader import load_recipe
from kit.recipe.stages import evaluate_config


def register(app: typer.Typer) -> None:
    app.command("build")(build)
    app.command("eval")(evaluate)


def build(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    preset: Optional[str] = PRESET,
    runs: Path = typer.Option(Path("runs"), "--runs", help="folder holding run directories (runs/<task-name>/)"),
    until: str = typer.Option("bundle", "--until", help="stop after this stage: generate|train|probe|export|eval|bundle (with data.rounds > 1: the last round's)"),
    no_teacher: bool = typer.Option(False, "--no-teacher-eval", help="skip scoring the teacher in the report"),
    threads: int = typer.Option(None, "--threads", help="CPU threads per eval target"),
    serve_check: bool = typer.Option(True, "--serve-check/--no-serve-check",
                                     help="serve the finished bundle once and send it one request"),
) -> None:
    """Recipe to verified, quantized, evaluated bundle: generate, train, export, eval, bundle (resumable)."""
    loaded = load_recipe(recipe, preset)
    run_dir = RunDir.for_task(loaded.task.name, runs)
    results = run_build(loaded, run_dir, until=until, eval_teacher=not no_teacher, threads=threads,
                        serve=serve_check)
    console = Console()
    console.print(summary_table(results))
    if results[-1].stage in ("bundle", "serve"):
        report = run_dir.eval / "report.md"
        console.print(report.read_text())
        console.print(f"bundle: [bold]{run_dir.bundle}[/bold]\n"
                      f"  chat:  kit chat {run_dir.bundle}\n"
                      f"  run:   kit run {run_dir.bundle} \"your input\"\n"
                      f"  serve: kit serve {run_dir.bundle} --port 8000")


def evaluate(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    preset: Optional[str] = PRESET,
    runs: Path = typer.Option(Path("runs"), "--runs", help="folder holding run directories (runs/<task-name>/)"),
    limit: int = typer.Option(None, "--limit", help="score only the first N eval cases"),
    no_teacher: bool = typer.Option(False, "--no-teacher", help="skip scoring the teacher"),
    threads: int = typer.Option(None, "--threads", help="CPU threads per target (default: the library's choice)"),
    force: bool = typer.Option(False, "--force", help="score again even when the report is up to date"),
) -> None:
    """Score base student, teacher, trained student and every export on the held-out set; write the report."""
    loaded = load_recipe(recipe, preset)
    if limit:
        loaded.eval.limit = limit
    run_dir = RunDir.for_task(loaded.task.name, runs)
    manifest = run_eval(evaluate_config(loaded, include_teacher=not no_teacher), run_dir, threads=threads, force=force)
    typer.echo(f"report: {run_dir.eval / manifest.outputs['markdown']}")
