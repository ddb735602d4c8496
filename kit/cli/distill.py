"""`kit generate`: maps flags onto the generate stage's config; the logic lives in kit.distill.generate."""

from __future__ import annotations

from typing import Optional
import shutil
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console

from kit.core.errors import UserError
from kit.core.run_dir import RunDir
from kit.distill.config import GenerateConfig
from kit.distill.generate import run
from kit.cli.options import PRESET
from kit.recipe.loader import load_recipe
from kit.recipe.stages import generate_config


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)


def generate(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    preset: Optional[str] = PRESET,
    runs: Path = typer.Option(Path("runs"), "--runs", help="folder holding run directories (runs/<task-name>/)"),
    target: int = typer.Option(None, "--target", min=1, help="override data.target_samples"),
    backend: str = typer.Option(None, "--teacher-backend", help="override teacher.backend (openai, llama_cpp, hf)"),
    model: str = typer.Option(None, "--teacher-model", help="override teacher.model"),
    url: str = typer.Option(None, "--teacher-url", help="override teacher.base_url (OpenAI-compatible endpoint; "
                                                          "several, comma-separated, share the requests)"),
    concurrency: int = typer.Option(None, "--concurrency", min=1, help="override teacher.concurrency"),
    max_tokens: int = typer.Option(None, "--max-tokens", min=16, help="override teacher.max_tokens"),
    ray: str = typer.Option(None, "--ray", help="generate on a Ray cluster: its address (ray://... or host:port), "
                                                "or auto (a running local cluster, else a new one); needs "
                                                "microkit[distributed]"),
    ray_workers: int = typer.Option(None, "--ray-workers", min=1, help="worker actors (default: the cluster's CPUs)"),
    fresh: bool = typer.Option(False, "--fresh", help="delete this recipe's data folder (samples and cache) first"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show the progress bar"),
) -> None:
    """Distill task data: the teacher writes, the critic keeps what passes; writes runs/<task>/data/."""
    loaded = load_recipe(recipe, preset)
    config = generate_config(loaded)
    teacher = {k: v for k, v in {"backend": backend, "model": model, "base_url": _endpoints(url),
                                 "concurrency": concurrency, "max_tokens": max_tokens}.items() if v is not None}
    data = {"target_samples": target} if target is not None else {}
    try:
        config = GenerateConfig.model_validate(config.model_dump(by_alias=True) | {
            "teacher": config.teacher.model_dump() | teacher, "data": config.data.model_dump() | data,
            "ray": ray, "ray_workers": ray_workers})
    except ValidationError as err:
        first = err.errors()[0]
        raise UserError(f"bad option: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    run_dir = RunDir.for_task(loaded.task.name, runs)
    if fresh:
        shutil.rmtree(run_dir.data, ignore_errors=True)
    manifest = run(config, run_dir, show_progress=progress)
    figures = manifest.figures
    console = Console()
    colour = "green" if figures["target_reached"] else "yellow"
    console.print(f"[{colour}]{figures['accepted']}[/{colour}] samples (target {config.data.target_samples}), "
                  f"acceptance {figures['acceptance_rate']:.0%}, split {figures['split']} -> {run_dir.data}",
                  soft_wrap=True)
    if not figures["target_reached"]:
        console.print("[yellow]the attempt budget ran out before the target; raise critic.max_attempts_factor, "
                      "loosen the verifiers, or run again with a stronger teacher[/yellow]")


def _endpoints(url: str | None) -> str | list[str] | None:
    """--teacher-url as the recipe's base_url: one endpoint, or a list when several are comma-separated."""
    if url is None or "," not in url:
        return url
    return [part.strip() for part in url.split(",") if part.strip()]
