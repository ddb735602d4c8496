"""`kit export`: flags and recipe onto the export stage's config; the work is export.stage.run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from pydantic import ValidationError
from rich.console import Console

from export.config import BundleInfo, ExportConfig, ExportStageConfig
from export.stage import run
from kit.core.errors import UserError
from kit.core.run_dir import RunDir
from kit.cli.options import PRESET
from kit.recipe.loader import load_recipe
from kit.recipe.stages import export_config


def _export_config(base: dict[str, Any], gguf: list[str] | None, ship: list[str] | None, onnx: bool | None,
                   pre_tokenizer: str | None) -> ExportConfig:
    data = dict(base)
    if gguf:
        data["gguf_types"] = gguf
    if ship:
        data["ship"] = ship
    if onnx is not None:
        data["onnx"] = {**data.get("onnx", {}), "enabled": onnx}
    if pre_tokenizer:
        data["gguf_pre_tokenizer"] = pre_tokenizer
    try:
        return ExportConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"])) or "settings"
        raise UserError(f"export {where}: {first['msg'].removeprefix('Value error, ')}") from None


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_command(
        recipe: Optional[Path] = typer.Argument(None, help="recipe YAML (uses runs/<task>/train/adapter)"),
        preset: Optional[str] = PRESET,
        base: Optional[str] = typer.Option(None, "--base", help="base model: store name, .gguf, HF folder or id"),
        adapter: Optional[Path] = typer.Option(None, "--adapter", help="peft adapter folder"),
        out: Optional[Path] = typer.Option(None, "--out", help="without a recipe: writes OUT/export and OUT/bundle"),
        runs: Path = typer.Option(Path("runs"), "--runs", help="where run directories live"),
        gguf: Optional[list[str]] = typer.Option(None, "--gguf", help="GGUF type to make (repeat), e.g. Q4_K_M"),
        ship: Optional[list[str]] = typer.Option(None, "--ship", help="GGUF type to ship in the bundle (repeat)"),
        onnx: Optional[bool] = typer.Option(None, "--onnx/--no-onnx", help="make the ONNX exports"),
        pre_tokenizer: Optional[str] = typer.Option(None, "--pre-tokenizer",
                                                    help="llama.cpp pre-tokenizer for an unrecognised tokenizer"),
        name: Optional[str] = typer.Option(None, "--name", help="bundle name (without a recipe)"),
        system: Optional[str] = typer.Option(None, "--system", help="system prompt (without a recipe)"),
        force: bool = typer.Option(False, "--force", help="redo even when the export is up to date"),
    ) -> None:
        """Merge, convert (GGUF, ONNX), quantize, verify every artifact and write the bundle."""
        if recipe is not None:
            loaded = load_recipe(recipe, preset)
            run_dir = RunDir.for_task(loaded.task.name, runs)
            job = export_config(loaded, run_dir)
            job = job.model_copy(update={
                "export": _export_config(loaded.export.model_dump(), gguf, ship, onnx, pre_tokenizer),
                "adapter": adapter or job.adapter, "base": base or job.base})
        else:
            if out is None or (base is None and adapter is None):
                raise UserError("pass a recipe, or --out DIR with --base MODEL and/or --adapter DIR")
            run_dir = RunDir(out)
            job = ExportStageConfig(export=_export_config({}, gguf, ship, onnx, pre_tokenizer), base=base,
                                    adapter=adapter, bundle=BundleInfo(name=name or out.resolve().name,
                                                                       system_prompt=system))
        workdir, bundle_dir = run_dir.export, run_dir.bundle
        stage = run(job, run_dir, force=force)
        console = Console()
        failed = stage.figures.get("failed", [])
        console.print(f"[green]bundle[/green] {bundle_dir} ({len(stage.figures.get('shipped', []))} files); "
                      f"verification: {workdir / 'verify.json'}"
                      + (f"; [red]failed, not shipped:[/red] {', '.join(failed)}" if failed else ""))
