"""Faults a user meets: a disk that fills up during generation and export, and a teacher that dies mid-run. Each
ends with one clear message naming the fix, leaves nothing half-written that a rerun would trust, and the rerun
finishes once the cause is gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from kit.core.disk import disk_full
from kit.core.run_dir import RunDir
from kit.distill.generate import run as generate
from kit.recipe.loader import load_recipe
from kit.recipe.stages import generate_config
from tests.test_generate import FakeTeacher, read_jsonl, write_recipe

REPO = Path(__file__).resolve().parents[1]


def _can_mount() -> bool:
    if os.getuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="mounting a small tmpfs needs root")


@contextmanager
def small_disk(folder: Path, size: str):
    """A tmpfs of `size` mounted at `folder`; `resize(size)` grows it in place (its files stay)."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)

    def resize(new: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new}", str(folder)], check=True)

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def partials(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".partial")]


def kit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kit", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


@needs_mount
def test_generation_into_a_full_disk_ends_with_the_fix_and_resumes_once_space_is_freed(tmp_path):
    teacher = FakeTeacher()
    try:
        recipe = write_recipe(tmp_path, teacher.url, target=30)
        runs = tmp_path / "runs"
        with small_disk(runs, "96k") as resize:
            full = kit("generate", str(recipe), "--runs", str(runs), "--no-progress")
            assert full.returncode == 1, full.stderr
            assert "the disk is full" in full.stderr and "free some space" in full.stderr
            assert "Traceback" not in full.stderr
            data = runs / "fake-task" / "data"
            before = read_jsonl(data / "samples.jsonl") if (data / "samples.jsonl").exists() else []
            assert partials(runs) == []  # nothing half-written
            sent = teacher.count
            resize("32m")
            done = kit("generate", str(recipe), "--runs", str(runs), "--no-progress")
            assert done.returncode == 0, done.stderr
            samples = read_jsonl(data / "samples.jsonl")
            assert len(samples) == 30 and len({s["id"] for s in samples}) == 30
            assert {s["id"] for s in before} <= {s["id"] for s in samples}  # what was kept stays
            assert (data / "dataset" / "dataset_dict.json").is_file() and partials(runs) == []
            assert teacher.count > sent
    finally:
        teacher.close()


@needs_mount
def test_export_into_a_full_disk_leaves_no_artifact_to_trust_and_finishes_once_space_is_freed(
        tiny_llama, tmp_path):
    from export.config import BundleInfo, ExportConfig, ExportStageConfig
    from export.stage import run as export
    from runtime.bundle import verify_files
    from runtime.manifest import read_manifest
    from tests.test_export import make_adapter

    adapter = make_adapter(tiny_llama, tmp_path / "adapter")
    config = ExportStageConfig(
        export=ExportConfig(gguf_types=["F16", "Q8_0"], ship=["Q8_0"], gguf_pre_tokenizer="gpt-2",
                            onnx={"enabled": False}, min_top1_agreement=0.0, max_perplexity_ratio=10.0,
                            verify_tokens=8, threads=1),
        bundle=BundleInfo(name="tiny-timer", task="Set timers."), adapter=adapter, base=str(tiny_llama))
    root = tmp_path / "run"
    with small_disk(root, "1m") as resize:
        with pytest.raises(Exception) as raised:
            export(config, RunDir(root))
        assert disk_full(raised.value) is not None, raised.value
        assert partials(root) == [] and not (root / "export" / "manifest.json").exists()
        resize("256m")
        export(config, RunDir(root))
        verify_files(root / "bundle", read_manifest(root / "bundle"))
        assert partials(root) == []


def test_a_full_disk_is_recognised_wherever_it_surfaces():
    import errno
    import sqlite3

    assert disk_full(OSError(errno.ENOSPC, "No space left on device", "/runs/x")) is not None
    assert disk_full(sqlite3.OperationalError("database or disk is full")) is not None
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("saving the dataset failed") from inner
    except RuntimeError as outer:
        assert disk_full(outer) is not None
    assert disk_full(ValueError("bad recipe")) is None


def test_a_teacher_that_dies_mid_run_stops_the_stage_and_the_rerun_pays_nothing_twice(tmp_path):
    first = FakeTeacher(faults={k: "die" for k in range(12, 200)})
    second = FakeTeacher()
    try:
        recipe_path = write_recipe(tmp_path, first.url, target=16, teacher_extra=", max_retries: 1")
        run_dir = RunDir(tmp_path / "run")
        with pytest.raises(Exception) as raised:
            generate(generate_config(load_recipe(recipe_path)), run_dir)
        assert "cannot reach the teacher" in str(raised.value) and "run again" in str(raised.value)
        kept = read_jsonl(run_dir.data / "samples.jsonl")
        assert 0 < len(kept) < 16
        recipe_path.write_text(recipe_path.read_text().replace(first.url, second.url))
        generate(generate_config(load_recipe(recipe_path)), run_dir)
        samples = read_jsonl(run_dir.data / "samples.jsonl")
        assert len(samples) == 16 and len({s["id"] for s in samples}) == 16
        assert {s["id"] for s in kept} <= {s["id"] for s in samples}
        assert not set(first.bodies) & set(second.bodies)  # no answered request was sent again
        stats = json.loads((run_dir.data / "stats.json").read_text())
        assert stats["target_reached"]
    finally:
        first.close()
        second.close()
