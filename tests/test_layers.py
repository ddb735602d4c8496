"""The layering of DESIGN.md, as the import-linter contract in pyproject.toml checks it: a package imports only
what stands below it (lazy imports inside functions included), and no two siblings import each other."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kit", "trainers", "export", "runtime")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True)


@pytest.fixture
def source_copy(tmp_path: Path) -> Path:
    """The project's packages and pyproject.toml, copied so that a test may break them."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_layers_hold_in_the_code_as_it_is(source_copy):
    done = lint_imports(source_copy)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def broken_by(tree: Path, module: str, code: str) -> str:
    """lint-imports' report once `code` is appended to `module` (a path inside the copy); it must fail."""
    path = tree / module
    path.write_text(path.read_text() + "\n" + code + "\n")
    done = lint_imports(tree)
    assert done.returncode != 0, done.stdout
    return done.stdout


def test_export_importing_the_pipeline_breaks_the_contract(source_copy):
    report = broken_by(source_copy, "export/merge.py", "import kit.pipeline  # noqa: E402")
    assert "export.merge -> kit.pipeline" in report


def test_a_lazy_import_inside_a_function_counts_too(source_copy):
    report = broken_by(source_copy, "kit/core/config.py", "def _late():\n    from kit.distill import generate  # noqa: F401")
    assert "kit.core.config -> kit.distill.generate" in report


def test_two_runtime_modules_importing_each_other_are_a_cycle(source_copy):
    report = broken_by(source_copy, "runtime/params.py", "def _late():\n    from runtime import sampling  # noqa: F401")
    assert "No import cycle" in report and "BROKEN" in report


def test_runtime_importing_torch_breaks_the_contract(source_copy):
    report = broken_by(source_copy, "runtime/expert.py", "def _late():\n    import torch  # noqa: F401")
    assert "runtime.expert -> torch" in report
