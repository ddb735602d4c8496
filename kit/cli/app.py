"""The `kit` command line: maps flags onto stage configs; holds no logic of its own."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from kit.cli import distill, doctor, export, models, pipeline, recipe, runtime, train
from kit.core.disk import disk_full, disk_full_message
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
    except Exception as err:  # noqa: BLE001 - a full disk is the user's to fix; anything else is a bug
        full = disk_full(err)
        if full is None:
            raise
        Console(stderr=True).print(f"[red]error:[/red] {disk_full_message(full)}", highlight=False, soft_wrap=True)
        sys.exit(1)
