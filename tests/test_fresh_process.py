"""A call run in a fresh Python process (the build's training after a local teacher): the value comes back, an
error comes back as the same type with its message, and a child that dies says so."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kit.core.errors import UserError
from kit.core.fresh_process import FreshProcessDied, call_in_fresh_process
from kit.recipe.loader import load_recipe


def test_the_value_comes_back_from_another_process():
    assert call_in_fresh_process(os.getpid) != os.getpid()
    assert call_in_fresh_process(divmod, 17, 5) == (3, 2)
    assert call_in_fresh_process(sorted, [3, 1, 2], reverse=True) == [3, 2, 1]


def test_a_user_error_comes_back_as_one_with_its_message(tmp_path):
    with pytest.raises(UserError, match="recipe not found"):
        call_in_fresh_process(load_recipe, tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="invalid literal"):
        call_in_fresh_process(int, "x")


def test_a_child_that_dies_is_reported_with_its_exit_code():
    with pytest.raises(FreshProcessDied, match="exit code 3"):
        call_in_fresh_process(os._exit, 3)


def test_the_child_writes_where_the_parent_sees_it(tmp_path):
    target = tmp_path / "made.txt"
    call_in_fresh_process(Path.write_text, target, "from the child")
    assert target.read_text() == "from the child"


def test_the_child_dies_with_its_parent(tmp_path):
    """A parent killed alone (SIGKILL) takes the child with it: no training left running into the run."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text("import time\nfrom kit.core.fresh_process import call_in_fresh_process\n"
                      "call_in_fresh_process(time.sleep, 120)\n")
    parent = subprocess.Popen([sys.executable, str(script)], cwd=Path(__file__).resolve().parents[1],
                              env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    child = None
    for _ in range(200):  # the child shows up as the parent's only child process
        children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
        if children.exists() and children.read_text().split():
            child = int(children.read_text().split()[0])
            break
        time.sleep(0.05)
    assert child is not None
    time.sleep(0.5)  # past its start, where it asks to die with its parent
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    for _ in range(100):
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
