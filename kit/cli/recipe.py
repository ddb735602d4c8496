"""`kit validate` and `kit init`: check a recipe, or scaffold a new one from a template."""

from __future__ import annotations

from typing import Optional
from pathlib import Path

import typer
from rich.console import Console

from kit.cli.options import PRESET
from kit.recipe.loader import RecipeInvalid, load_recipe, load_seeds
from kit.recipe.scaffold import scaffold

console = Console()
err_console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command()(validate)
    app.command()(init)


def validate(recipe: Path = typer.Argument(..., help="recipe YAML"), preset: Optional[str] = PRESET) -> None:
    """Check a recipe: every problem with its line, YAML path and fix."""
    try:
        loaded = load_recipe(recipe, preset)
        seeds = load_seeds(loaded)
    except RecipeInvalid as err:
        for problem in err.problems:
            err_console.print(problem.render(err.source), markup=False, highlight=False, soft_wrap=True)
        err_console.print(f"[red]{len(err.problems)} problem(s) in {err.source}[/red]", soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"[green]ok[/green] {recipe}: task '{loaded.task.name}', {len(seeds)} seed(s), "
                  f"teacher {loaded.teacher.backend}:{loaded.teacher.model}, student {loaded.student.model}")


def init(name: str = typer.Argument(..., help="folder and task name of the new recipe"),
         template: str = typer.Option("tool-calling", "--template", "-t", help="tool-calling | text-to-sql")) -> None:
    """Scaffold a new recipe folder (recipe, seeds, eval set) from a template."""
    recipe = scaffold(name, template)
    console.print(f"[green]created[/green] {recipe.parent}/ — edit it, then `kit validate {recipe}`")
