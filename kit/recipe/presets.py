"""Presets: YAML overlays merged into a recipe before it is validated (`kit build RECIPE --preset NAME`).

A preset is recipe-independent (a stronger student, full fine-tuning); the built-in ones live in
kit/recipe/presets/, and a path to a YAML file of the same shape works too. A preset's run goes into its own
run directory, runs/<task>-<preset>/, so it never overwrites the recipe's own build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kit.core.errors import UserError

PRESETS_DIR = Path(__file__).with_name("presets")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_file(name: str) -> Path:
    """The built-in preset `name`, or `name` itself when it is a path to a YAML file."""
    built_in = PRESETS_DIR / f"{name}.yaml"
    if built_in.is_file():
        return built_in
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    raise UserError(f"unknown preset '{name}': use one of {', '.join(preset_names())} or a path to a YAML overlay")


def apply_preset(data: dict[str, Any], name: str) -> dict[str, Any]:
    """The recipe's data with the preset merged in (mappings merge key by key; other values replace)."""
    path = preset_file(name)
    try:
        overlay = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"preset {path} is not valid YAML ({err}): fix it") from None
    if not isinstance(overlay, dict):
        raise UserError(f"preset {path} must be a mapping of recipe sections (student:, train:, ...)")
    merged = deep_merge(data, overlay)
    task = merged.get("task")
    if isinstance(task, dict) and isinstance(task.get("name"), str):
        merged["task"] = {**task, "name": f"{task['name']}-{path.stem}"}
    return merged


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
