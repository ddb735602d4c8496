"""The chaos build, shrunken: `kit build` killed with SIGKILL in generation, training, export and eval, rerun to
the end: nothing kept before a kill is lost, no id twice, no cached answer paid for again, and the build ends as
an uninterrupted one from the same teacher cache does: the same samples, the same trained weights bit for bit,
the same scores, a bundle that verifies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_build_killed_in_four_stages_ends_as_an_uninterrupted_one(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "chaos_build.py"), "--kills", "4",
                           "--stages", "generate,train,export,eval", "--seed", "1", "--workdir", str(tmp_path / "chaos")],
                          cwd=REPO, capture_output=True, text=True, timeout=1800)
    report = done.stdout + done.stderr[-2000:]
    assert "0 samples lost, 0 duplicated, 0 requests repeated" in done.stdout, report
    for check in ("every sample accepted before a kill is kept", "no sample id twice",
                  "accepted samples equal the uninterrupted build's (ids and content)",
                  "no answer the cache held was paid for again", "training resumed from its last checkpoint",
                  "the trained weights equal the uninterrupted build's, bit for bit", "the bundle verifies",
                  "eval scores equal the uninterrupted build's"):
        assert f"PASS  {check}" in done.stdout, report
    assert done.returncode == 0, report
