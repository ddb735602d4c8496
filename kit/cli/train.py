"""`kit train RECIPE`: maps flags onto the recipe's `train:` section and runs the training stage."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

from kit.core.errors import UserError
from kit.core.run_dir import RunDir
from kit.cli.options import PRESET
from kit.recipe.loader import load_recipe
from kit.recipe.stages import train_config
from trainers.sft import run


def register(app: typer.Typer) -> None:
    app.command("train")(train)


def train(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    preset: Optional[str] = PRESET,
    runs: Path = typer.Option(Path("runs"), "--runs", help="folder holding run directories (runs/<task-name>/)"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="this run directory instead of RUNS/<task-name>"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="override train.max_steps"),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="override train.epochs"),
    device: Optional[str] = typer.Option(None, "--device", help="override train.device: auto | cpu | cuda"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show the progress bar"),
) -> None:
    """Train the student with LoRA (or QLoRA / logit distillation); rerun the same command to resume."""
    loaded = load_recipe(recipe, preset)
    overrides = {k: v for k, v in {"max_steps": max_steps, "epochs": epochs, "device": device}.items() if v is not None}
    try:
        config = type(loaded.train).model_validate(loaded.train.model_dump() | overrides)
    except ValidationError as err:
        raise UserError(f"bad flag value: {err.errors()[0]['loc'][0]}: {err.errors()[0]['msg']}") from None
    loaded = loaded.model_copy(update={"train": config})
    folder = RunDir(run_dir) if run_dir else RunDir.for_task(loaded.task.name, runs)
    manifest = run(train_config(loaded), folder, show_progress=progress)
    figures = manifest.figures
    if figures:
        typer.echo(f"validation loss {figures.get('validation_loss_before'):.4f} -> "
                   f"{figures.get('validation_loss_after'):.4f}; {figures.get('train_tokens_per_s')} train tokens/s; "
                   f"adapter: {folder.adapter}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _leave_without_finalization()


def _leave_without_finalization() -> None:
    """One rank of several, done and with everything written: leave before the interpreter's finalization, where
    gloo's worker threads, still holding work objects after the process group is destroyed, now and then abort the
    process ("terminate called without an active exception", SIGABRT), failing a run that has finished."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
