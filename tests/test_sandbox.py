"""The python sandbox refuses what untrusted code must not do, names why, and leaves the machine as it was."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from kit.distill.sandbox import run_python


def processes() -> set[int]:
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def leftover_sandboxes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "solution.py" in line and "microkit-sandbox" in line]


def test_passing_code_and_tests_run_in_their_own_folder():
    result = run_python(textwrap.dedent("""\
        import os, json
        def add(a, b):
            return a + b
        open("scratch.txt", "w").write("ok")
        assert add(2, 3) == 5
        print(json.dumps({"cwd_is_sandbox": "microkit-sandbox" in os.getcwd()}))
        """), timeout_s=10)
    assert result.ok, result.stderr
    assert '"cwd_is_sandbox": true' in result.stdout


def test_failing_tests_are_reported_with_their_error():
    result = run_python("def add(a, b):\n    return a - b\nassert add(2, 3) == 5, 'add is wrong'\n")
    assert result.kind == "error" and "add is wrong" in result.detail


def test_infinite_loop_is_killed_with_its_process_group():
    result = run_python("while True:\n    pass\n", timeout_s=2)
    assert result.kind == "time_limit"
    assert leftover_sandboxes() == []


def test_ten_gigabytes_are_refused():
    result = run_python("block = bytearray(10 * 1024 ** 3)\nprint(len(block))\n", memory_mb=256)
    assert result.kind == "memory"


def test_writing_outside_its_folder_is_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run_python(f"open({str(target)!r}, 'w').write('pwned')\n")
    assert result.kind == "filesystem" and str(target) in result.detail
    assert not target.exists()
    renamed = run_python(f"import os\nopen('x', 'w').close()\nos.rename('x', {str(tmp_path / 'moved')!r})\n")
    assert renamed.kind == "filesystem" and not (tmp_path / "moved").exists()


def test_opening_a_socket_is_refused():
    result = run_python("import socket\ns = socket.create_connection(('127.0.0.1', 80), timeout=1)\n")
    assert result.kind == "network"


@pytest.mark.parametrize(("code", "kind"), [
    ("import os\nwhile True:\n    os.fork()\n", "process"),
    ("import subprocess\nwhile True:\n    subprocess.Popen(['sleep', '100'])\n", "process"),
    ("import ctypes\nlibc = ctypes.CDLL(None)\nwhile True:\n    libc.fork()\n", "ctypes"),  # refused at the dlopen
])
def test_fork_bombs_are_refused_and_leave_no_process_behind(code, kind):
    before = processes()
    result = run_python(code, timeout_s=5)
    assert result.kind == kind, result
    assert leftover_sandboxes() == []
    assert len(processes() - before) < 5  # nothing multiplied


def test_big_files_hit_the_file_size_limit():
    result = run_python("open('big.bin', 'wb').write(b'x' * (64 << 20))\n", memory_mb=512)
    assert result.kind == "file_size"


def test_the_sandbox_folder_is_removed_afterwards(tmp_path):
    result = run_python("import os\nprint(os.getcwd())\n")
    assert result.ok and not Path(result.stdout.strip()).exists()
