"""Options several commands share."""

from __future__ import annotations

import typer

from kit.recipe.presets import preset_names

PRESET = typer.Option(None, "--preset", help=f"merge a preset into the recipe ({', '.join(preset_names())}, or a "
                                             "YAML overlay's path); its run goes to RUNS/<task>-<preset>/")
