"""The `kit` command line: maps flags onto stage configs; holds no logic of its own."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from kit.cli import distill, doctor, export, models, pipeline, recipe, runtime, train
from kit.core.errors import UserError
from kit.core.progress import quiet_library_bars

app = typer.Typer(help="microkit: distill, train, quantize and serve on-device micro-experts.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
for group in (recipe, models, doctor, distill, train, export, runtime, pipeline):  # one module per command group
    group.register(app)


def main() -> None:
    quiet_library_bars()
    try:
        app()
    except UserError as err:
        Console(stderr=True).print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        sys.exit(1)
