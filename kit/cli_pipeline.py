"""`kit eval`: maps flags onto the eval stage; the logic lives in kit.evaluate."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)


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
