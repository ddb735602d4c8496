"""Put the evaluation report into a written bundle: manifest figures, model-card table, refreshed hashes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from kit.core.errors import UserError
from runtime.manifest import describe_file, read_manifest, write_manifest

EVAL_SECTION = re.compile(r"## Evaluation\n.*?(?=\n## )", re.DOTALL)


def attach_eval(bundle_dir: Path, report_json: Path, report_md: Path) -> None:
    """Record the report's figures in manifest.json and its table in README.md; rehash what changed."""
    if not (bundle_dir / "manifest.json").is_file():
        raise UserError(f"no bundle at {bundle_dir}: run the export stage first (`kit export RECIPE`)")
    if not report_json.is_file():
        raise UserError(f"no evaluation report at {report_json}: run `kit eval RECIPE` first")
    report = json.loads(report_json.read_text(encoding="utf-8"))
    manifest = read_manifest(bundle_dir)
    manifest.eval = {"cases": report["cases"], "primary_metric": report["primary_metric"],
                     "targets": {name: {**t["metrics"], **{k: v for k, v in t["runtime"].items() if v is not None}}
                                 for name, t in report["targets"].items()}}
    card = bundle_dir / "README.md"
    if card.is_file():
        table = report_md.read_text(encoding="utf-8").split("\n", 1)[1].strip()  # drop the report's title
        text = card.read_text(encoding="utf-8")
        section = f"## Evaluation\nHeld-out set of {report['cases']} hand-written cases.\n\n{table}\n"
        text = EVAL_SECTION.sub(lambda _: section, text, count=1) if EVAL_SECTION.search(text) else text + "\n" + section
        card.write_text(text, encoding="utf-8")
        manifest.files = [describe_file(bundle_dir, card, f.kind, f.quant) if f.path == "README.md" else f
                          for f in manifest.files]
    write_manifest(bundle_dir, manifest)
