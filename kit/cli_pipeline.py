"""`kit eval`: maps flags onto the eval stage; the logic lives in kit.evaluate."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def register(app: typer.Typer) -> None:
    app.command("build")(build)
    app.command("eval")(evaluate)


def build(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    runs: Path = typer.Option(Path("runs"), "--runs", help="folder holding run directories (runs/<task-name>/)"),
    until: str = typer.Option("bundle", "--until", help="stop after this stage: generate|train|export|eval|bundle"),
    no_teacher: bool = typer.Option(False, "--no-teacher-eval", help="skip scoring the teacher in the report"),
    threads: int = typer.Option(None, "--threads", help="CPU threads per eval target"),
    serve_check: bool = typer.Option(True, "--serve-check/--no-serve-check",
                                     help="serve the finished bundle once and send it one request"),
) -> None:
    """Recipe to verified, quantized, evaluated bundle: generate, train, export, eval, bundle (resumable)."""
    from kit.pipeline import build as run_build, summary_table
    from kit.recipe_loader import load_recipe
    from kit.run_dir import RunDir

    loaded = load_recipe(recipe)
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
    runs: Path = typer.Option(Path("runs"), "--runs", help="folder holding run directories (runs/<task-name>/)"),
    limit: int = typer.Option(None, "--limit", help="score only the first N eval cases"),
    no_teacher: bool = typer.Option(False, "--no-teacher", help="skip scoring the teacher"),
    threads: int = typer.Option(None, "--threads", help="CPU threads per target (default: the library's choice)"),
) -> None:
    """Score base student, teacher, trained student and every export on the held-out set; write the report."""
    from kit import evaluate as stage
    from kit.recipe_loader import load_recipe
    from kit.run_dir import RunDir

    loaded = load_recipe(recipe)
    if limit:
        loaded.eval.limit = limit
    run_dir = RunDir.for_task(loaded.task.name, runs)
    targets = stage.default_targets(loaded, run_dir, include_teacher=not no_teacher)
    manifest = stage.run(loaded, run_dir, targets, threads)
    typer.echo(f"report: {run_dir.eval / manifest.outputs['markdown']}")
