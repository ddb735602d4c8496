"""Generation on a local Ray cluster (`ray.init(num_cpus=2)`): the same samples as one process on the same teacher,
one request cache shared by the workers, and a worker killed mid-run restarted without losing or repeating
anything."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from kit.core.run_dir import RunDir
from kit.distill.generate import run
from kit.recipe.loader import load_recipe
from kit.recipe.stages import generate_config
from tests.test_generate import VOCAB, FakeTeacher, read_jsonl, write_recipe

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def teacher():
    server = FakeTeacher(jitter_s=0.03, vocab=VOCAB[:2])  # replies in any order; few words: near-duplicates
    yield server
    server.close()


def build(folder: Path, url: str, **engine) -> tuple:
    folder.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(write_recipe(folder, url, target=14, data_extra=", inputs_per_request: 2"))
    config = generate_config(recipe).model_copy(update=engine)
    return config, RunDir(folder / "run")


def samples(run_dir: RunDir) -> list[tuple]:
    return [(r["index"], r["id"], r["input"], r["output"]) for r in read_jsonl(run_dir.data / "samples.jsonl")]


def test_ray_workers_make_the_samples_one_process_makes(local_cluster, teacher, tmp_path):
    config, alone = build(tmp_path / "alone", teacher.url)
    run(config, alone)
    assert any(r["verifier"] == "dedup" for r in read_jsonl(alone.data / "rejected.jsonl"))

    # from the same cached teacher: nothing the cache holds is asked again (workers may run a list or two past
    # the end that one process never asked for), and the samples are the same, in the same order
    config, cached = build(tmp_path / "cached", teacher.url, ray="auto", ray_workers=2)
    (cached.data).mkdir(parents=True)
    shutil.copy(alone.data / "teacher_cache.sqlite", cached.data / "teacher_cache.sqlite")
    asked = len(teacher.bodies)
    run(config, cached)
    assert not set(teacher.bodies[asked:]) & set(teacher.bodies[:asked])
    assert samples(cached) == samples(alone)
    stats = json.loads((cached.data / "stats.json").read_text())
    assert stats["teacher"]["cached"] > 0 and stats["teacher"]["repeated_requests"] == 0

    # from scratch, the two workers sharing one cache: the same samples, no request paid twice
    config, fresh = build(tmp_path / "fresh", teacher.url, ray="auto", ray_workers=2)
    run(config, fresh)
    assert samples(fresh) == samples(alone)
    stats = json.loads((fresh.data / "stats.json").read_text())
    assert stats["teacher"]["requests"] > 0 and stats["teacher"]["repeated_requests"] == 0


def test_a_worker_killed_mid_run_is_restarted_and_nothing_is_lost(local_cluster, tmp_path):
    from kit.distill.distributed import WORKER_NAME

    reference = FakeTeacher(vocab=VOCAB[:2])
    slow = FakeTeacher(vocab=VOCAB[:2], delay_s=0.05)  # the same replies, slowly enough to kill a worker mid-run
    try:
        config, alone = build(tmp_path / "alone", reference.url)
        run(config, alone)
        config, killed = build(tmp_path / "killed", slow.url, ray="auto", ray_workers=2)
        worker = threading.Thread(target=run, args=(config, killed))
        worker.start()
        store = killed.data / "samples.jsonl"
        while worker.is_alive() and (not store.exists() or len(store.read_text().splitlines()) < 3):
            time.sleep(0.05)
        assert worker.is_alive() and len(store.read_text().splitlines()) < 14  # midway
        ray.kill(ray.get_actor(f"{WORKER_NAME}-0"), no_restart=False)  # Ray restarts it and retries its calls
        worker.join(timeout=300)
        assert not worker.is_alive()
        assert samples(killed) == samples(alone)
        stats = json.loads((killed.data / "stats.json").read_text())
        assert stats["accepted"] == 14 and stats["teacher"]["repeated_requests"] == 0
    finally:
        reference.close()
        slow.close()


def test_a_driver_killed_mid_run_resumes_to_the_samples_of_one_process(local_cluster, tmp_path):
    """`kit generate --ray auto` joins the running cluster; kill -9 of the driver ends its job (and its workers);
    the same command again resumes from the store and the cache and ends with the samples of one process."""
    import os
    import signal
    import subprocess
    import sys

    reference = FakeTeacher(vocab=VOCAB[:2])
    slow = FakeTeacher(vocab=VOCAB[:2], delay_s=0.05)
    try:
        config, alone = build(tmp_path / "alone", reference.url)
        run(config, alone)
        folder = tmp_path / "killed"
        build(folder, slow.url)  # writes the recipe
        command = [sys.executable, "-m", "kit", "generate", str(folder / "recipe.yaml"), "--runs", str(folder / "runs"),
                   "--ray", "auto", "--ray-workers", "2", "--no-progress"]
        root = Path(__file__).resolve().parents[1]
        driver = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        store = folder / "runs" / "fake-task" / "data" / "samples.jsonl"
        while driver.poll() is None and (not store.exists() or len(store.read_text().splitlines()) < 3):
            time.sleep(0.05)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        assert driver.returncode == -signal.SIGKILL, "the run ended before it could be killed"
        kept_before = store.read_text().splitlines()
        assert 3 <= len(kept_before) < 14
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        resumed = RunDir(folder / "runs" / "fake-task")
        assert samples(resumed) == samples(alone)
        assert store.read_text().splitlines()[:len(kept_before)] == kept_before  # appended to, never rewritten
        stats = json.loads((resumed.data / "stats.json").read_text())
        assert stats["teacher"]["repeated_requests"] == 0
    finally:
        reference.close()
        slow.close()
