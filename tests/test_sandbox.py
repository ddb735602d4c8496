"""The python sandbox refuses what untrusted code must not do, names why, and leaves the machine as it was."""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from kit.distill.sandbox import isolation, run_python


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


# The hostile suite: each program is rejected with its reason and the host is left as it was, with the audit
# hook (which names the reason) and, where bubblewrap runs, without it (the outer layers hold on their own).
BUBBLEWRAP = isolation() == "bubblewrap"
LAYERS = [pytest.param(True, id="all-layers"),
          pytest.param(False, id="without-audit-hook",
                       marks=pytest.mark.skipif(not BUBBLEWRAP, reason="bubblewrap is not available here"))]


@pytest.mark.parametrize("hook", LAYERS)
def test_hostile_fork_bomb(hook):
    before = processes()
    result = run_python("import os\nwhile True:\n    os.fork()\n", timeout_s=5, audit_hook=hook)
    assert result.kind in ("process", "time_limit"), result  # refused, or held to 32 processes until killed
    assert leftover_sandboxes() == [] and len(processes() - before) < 5


@pytest.mark.parametrize("hook", LAYERS)
def test_hostile_ten_gigabytes_and_endless_output(hook):
    assert run_python("block = bytearray(10 * 1024 ** 3)\n", memory_mb=256, audit_hook=hook).kind == "memory"
    flood = run_python("while True:\n    print('x' * 4096)\n", timeout_s=20, max_output_kb=256, audit_hook=hook)
    assert flood.kind == "output" and "256 KB" in flood.detail and len(flood.stdout) <= 20_000


@pytest.mark.parametrize("hook", LAYERS)
def test_hostile_reading_secrets_and_writing_outside(hook, tmp_path):
    if os.getuid() == 0 and BUBBLEWRAP:  # root's own files: only a real unprivileged uid keeps them closed
        shadow = run_python("print(open('/etc/shadow').read())\n", audit_hook=hook)
        assert shadow.kind == "filesystem" and "/etc/shadow" in shadow.detail and not shadow.stdout
    home = Path.home()
    secret = next((p for p in sorted(home.iterdir()) if p.is_file()), None) if home.is_dir() else None
    if BUBBLEWRAP and secret is not None:
        peek = run_python(f"print(open({str(secret)!r}).read())\n", audit_hook=hook)
        assert peek.kind == "filesystem" and str(secret) in peek.detail and not peek.stdout
    target = tmp_path / "escaped.txt"
    written = run_python(f"open({str(target)!r}, 'w').write('pwned')\n", audit_hook=hook)
    assert written.kind == "filesystem" and not target.exists()


@pytest.mark.parametrize("hook", LAYERS)
def test_hostile_socket_to_the_host(hook):
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1]
        result = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n",
                            audit_hook=hook)
        assert result.kind == "network", result
        with pytest.raises(socket.timeout):
            server.accept()  # nothing reached the host


@pytest.mark.parametrize("hook", LAYERS)
def test_hostile_killing_its_parent_and_the_hosts_processes(hook):
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        code = f"import os, signal\nos.kill({bystander.pid}, signal.SIGKILL)\nos.kill(os.getppid(), signal.SIGKILL)\n"
        result = run_python(code, audit_hook=hook)
        assert not result.ok or not hook
        if hook:
            assert result.kind == "process" and "signal" in result.detail
        assert bystander.poll() is None  # the host's process lives on (in its own PID namespace it is not there)
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.parametrize("hook", LAYERS)
def test_hostile_children_sleeping_past_the_time_limit(hook):
    marker = "61.4242"
    code = textwrap.dedent(f"""\
        import os, time
        for _ in range(3):
            if os.fork() == 0:
                os.execv("/bin/sleep", ["sleep", "{marker}"])
        time.sleep(100)
        """)
    result = run_python(code, timeout_s=3, audit_hook=hook)
    assert result.kind == ("process" if hook else "time_limit"), result
    time.sleep(0.5)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"sleep {marker}" not in ps and leftover_sandboxes() == []
