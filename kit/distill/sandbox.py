"""Run untrusted Python in a subprocess: CPU, memory, file-size and process limits, no network, own temp dir.

Layers, strongest first: a fresh network namespace (`unshare -n`, when the kernel allows it), an
unprivileged user when we run as root (so RLIMIT_NPROC applies and most of the disk is read-only),
resource limits, and an audit hook that names what was refused (writes outside the working
directory, sockets, new processes, ctypes) so a rejection says why. The whole process group is
killed on timeout.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534
OUTPUT_LIMIT = 20_000  # characters of stdout/stderr kept

# Markers the guard prints; the parent maps them to a reason.
REFUSALS = {
    "sandbox-refused: write outside working directory": "filesystem",
    "sandbox-refused: network": "network",
    "sandbox-refused: process creation": "process",
    "sandbox-refused: ctypes": "ctypes",
}

GUARD = r'''
import os, resource, sys
WORKDIR = os.path.realpath(sys.argv[1])
LIMITS = [int(x) for x in sys.argv[2:7]]
cpu_s, mem_bytes, fsize_bytes, nproc, drop_to = LIMITS
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_bytes, fsize_bytes))
if drop_to >= 0 and os.getuid() == 0:
    os.setgroups([])
    os.setgid(drop_to)
    os.setuid(drop_to)
resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
os.chdir(WORKDIR)
os.environ["HOME"] = WORKDIR
os.environ["TMPDIR"] = WORKDIR

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _inside(path):
    try:
        real = os.path.realpath(os.fsdecode(path) if not isinstance(path, int) else "/proc/self/fd/%d" % path)
    except Exception:
        return False
    return real == WORKDIR or real.startswith(WORKDIR + os.sep) or real == os.devnull


def _refuse(what, detail):
    raise PermissionError("sandbox-refused: %s (%s)" % (what, detail))


def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & _WRITE_FLAGS
        if writes and path is not None and not isinstance(path, int) and not _inside(path):
            _refuse("write outside working directory", path)
    elif event in ("os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.replace", "os.chmod", "os.chown",
                   "os.symlink", "os.link", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move"):
        for path in args[:2]:
            if isinstance(path, (str, bytes, os.PathLike)) and not _inside(path):
                _refuse("write outside working directory", path)
    elif event.startswith("socket.") and event not in ("socket.gethostname", "socket.sethostname"):
        _refuse("network", event)
    elif event in ("os.fork", "os.forkpty", "os.system", "os.posix_spawn", "os.exec", "os.spawn",
                   "subprocess.Popen", "os.startfile", "pty.spawn"):
        _refuse("process creation", event)
    elif event == "ctypes.dlopen":
        _refuse("ctypes", "loading native libraries")


sys.addaudithook(_hook)
del LIMITS
_source = open(os.path.join(WORKDIR, "solution.py"), encoding="utf-8").read()
exec(compile(_source, "solution.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
'''


@dataclass(frozen=True)
class SandboxResult:
    kind: str  # ok | time_limit | memory | filesystem | network | process | ctypes | file_size | error
    detail: str
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    @property
    def reason(self) -> str:
        return "passed" if self.ok else f"{self.kind}: {self.detail}"


def run_python(code: str, *, timeout_s: float = 10.0, memory_mb: int = 512, file_mb: int = 16,
               max_processes: int = 32) -> SandboxResult:
    """Run `code` in a sandboxed interpreter; the result names why it failed, if it did."""
    workdir = Path(tempfile.mkdtemp(prefix="microkit-sandbox-"))
    try:
        (workdir / "solution.py").write_text(code, encoding="utf-8")
        drop_to = NOBODY if os.getuid() == 0 and _interpreter_readable_by_others() else -1
        if drop_to >= 0:
            os.chown(workdir, NOBODY, NOBODY)
            os.chown(workdir / "solution.py", NOBODY, NOBODY)
        limits = [math.ceil(timeout_s) + 1, memory_mb << 20, file_mb << 20, max_processes, drop_to]
        command = [*_network_isolation(drop_to >= 0), sys.executable, "-I", "-B", "-c", GUARD, str(workdir),
                   *(str(x) for x in limits)]
        return _run(command, workdir, timeout_s)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(command: list[str], workdir: Path, timeout_s: float) -> SandboxResult:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
    process = subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    timed_out = False
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process.pid)
        out, err = process.communicate()
    finally:
        _kill_group(process.pid)  # children left behind by a finished program
    stdout = out.decode("utf-8", "replace")[-OUTPUT_LIMIT:]
    stderr = err.decode("utf-8", "replace")[-OUTPUT_LIMIT:]
    kind, detail = _classify(process.returncode, stderr, timed_out, timeout_s)
    return SandboxResult(kind, detail, stdout, stderr)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _classify(returncode: int, stderr: str, timed_out: bool, timeout_s: float) -> tuple[str, str]:
    if timed_out or returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return "time_limit", f"killed after {timeout_s:g}s"
    for marker, kind in REFUSALS.items():
        if marker in stderr:
            line = next(x for x in stderr.splitlines() if marker in x)
            return kind, line.split("sandbox-refused: ", 1)[1][:300]
    last = (stderr.strip().splitlines() or [""])[-1][:300]
    if "MemoryError" in stderr:
        return "memory", "memory limit exceeded"
    if returncode == -signal.SIGXFSZ or "File too large" in stderr:
        return "file_size", "file size limit exceeded"
    if "BlockingIOError" in stderr and "Resource temporarily unavailable" in stderr:
        return "process", "process limit reached"
    if returncode != 0:
        return "error", last or f"exit status {returncode}"
    return "ok", ""


@functools.lru_cache(maxsize=2)
def _network_isolation(as_root: bool) -> tuple[str, ...]:
    """A new network namespace: `unshare -n` as root, else `-rn` (a user namespace, in which root also
    loses its host capabilities, so RLIMIT_NPROC holds); without either, the audit hook alone."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    for flags in (("-n",),) if as_root else (("-rn",),):
        probe = subprocess.run([unshare, *flags, "true"], capture_output=True)
        if probe.returncode == 0:
            return (unshare, *flags)
    return ()


@functools.lru_cache(maxsize=1)
def _interpreter_readable_by_others() -> bool:
    """Whether an unprivileged user could run this interpreter (a Python under /root often cannot)."""
    import stat
    import sysconfig

    for target in (Path(sys.executable).resolve(), Path(sysconfig.get_paths()["stdlib"]), Path(sys.prefix)):
        for folder in [target, *target.parents]:
            mode = folder.stat().st_mode
            if folder.is_dir() and not mode & stat.S_IXOTH or not mode & stat.S_IROTH:
                return False
    return True
