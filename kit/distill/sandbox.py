"""Run untrusted Python in a subprocess: CPU, memory, file-size, process and output limits, no network, own
temp dir.

Layers, strongest first:
- bubblewrap (`bwrap`, Debian's `bubblewrap`, installed by scripts/setup.sh where it can be): a read-only root,
  a private writable /tmp, the home folders hidden (the interpreter's own folders bound back read-only), the
  working folder the only writable place, no network, its own PID namespace (nothing in it outlives the run,
  and it cannot signal the host's processes). Started by root, bwrap sets this up without a user namespace
  and the code runs as the host's real `nobody` (`setpriv`): a bwrap started by root with `--uid 65534` in a
  user namespace can still read /etc/shadow, since its files see uid 0;
- without bubblewrap (said once): a fresh network namespace (`unshare -n`, when the kernel allows it) and an
  unprivileged user when we run as root (so RLIMIT_NPROC applies and most of the disk is read-only);
- resource limits (CPU time, address space, file size, processes) and an output cap (the run is killed past
  it);
- an audit hook that names what was refused (writes outside the working directory, sockets, new processes,
  signals, ctypes) so a rejection says why.
The whole process group is killed on timeout.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534
OUTPUT_LIMIT = 20_000  # characters of stdout/stderr kept
HIDDEN = ("/root", "/home")  # the users' homes: hidden from sandboxed code
log = logging.getLogger(__name__)

# Markers the guard prints; the parent maps them to a reason.
REFUSALS = {
    "sandbox-refused: write outside working directory": "filesystem",
    "sandbox-refused: network": "network",
    "sandbox-refused: process creation": "process",
    "sandbox-refused: signal": "process",
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
    elif event in ("os.kill", "os.killpg", "signal.pthread_kill"):
        _refuse("signal", "to process %s" % (args[0],))
    elif event == "ctypes.dlopen":
        _refuse("ctypes", "loading native libraries")


sys.addaudithook(_hook)
del LIMITS
_source = open(os.path.join(WORKDIR, "solution.py"), encoding="utf-8").read()
exec(compile(_source, "solution.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
'''


@dataclass(frozen=True)
class SandboxResult:
    kind: str  # ok | time_limit | memory | filesystem | network | process | ctypes | file_size | output | error
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
               max_processes: int = 32, max_output_kb: int = 1024, audit_hook: bool = True) -> SandboxResult:
    """Run `code` in a sandboxed interpreter; the result names why it failed, if it did. `audit_hook` False
    leaves out the innermost layer (only to check that the others hold on their own)."""
    workdir = Path(tempfile.mkdtemp(prefix="microkit-sandbox-"))
    try:
        (workdir / "solution.py").write_text(code, encoding="utf-8")
        as_root = os.getuid() == 0
        outer = _bubblewrap(workdir)
        # without bubblewrap, root drops to nobody in the guard (where nobody can read the interpreter)
        drop_to = NOBODY if as_root and not outer and _interpreter_readable_by_others() else -1
        if as_root and (outer or drop_to >= 0):
            os.chown(workdir, NOBODY, NOBODY)
            os.chown(workdir / "solution.py", NOBODY, NOBODY)
        outer = outer or list(_network_isolation(drop_to >= 0))
        limits = [math.ceil(timeout_s) + 1, memory_mb << 20, file_mb << 20, max_processes, drop_to]
        guard = GUARD if audit_hook else GUARD.replace("sys.addaudithook(_hook)", "")
        command = [*outer, sys.executable, "-I", "-B", "-c", guard, str(workdir), *(str(x) for x in limits)]
        return _run(command, workdir, timeout_s, max_output_kb << 10)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def isolation() -> str:
    """Which outer layer `run_python` uses here: "bubblewrap", "unshare" or "audit hook and limits only"."""
    if _bubblewrap_works():
        return "bubblewrap"
    as_nobody = os.getuid() == 0 and _interpreter_readable_by_others()
    return "unshare" if _network_isolation(as_nobody) else "audit hook and limits only"


def _run(command: list[str], workdir: Path, timeout_s: float, max_output: int) -> SandboxResult:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
    process = subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err, ended = _collect(process, timeout_s, max_output)
    finally:
        _kill_group(process.pid)  # on time out or too much output, and children left behind by a finished program
        process.wait()
    stdout = out.decode("utf-8", "replace")[-OUTPUT_LIMIT:]
    stderr = err.decode("utf-8", "replace")[-OUTPUT_LIMIT:]
    if ended == "output":
        return SandboxResult("output", f"more than {max_output >> 10} KB of output", stdout, stderr)
    kind, detail = _classify(process.returncode, stderr, ended == "time", timeout_s)
    return SandboxResult(kind, detail, stdout, stderr)


def _collect(process: subprocess.Popen, timeout_s: float, max_output: int) -> tuple[bytes, bytes, str]:
    """Read stdout and stderr until both close, the time is up ("time") or together they pass `max_output`
    bytes ("output"); only the last OUTPUT_LIMIT bytes of each are kept."""
    kept = {process.stdout: bytearray(), process.stderr: bytearray()}
    total, deadline = 0, time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        for pipe in kept:
            selector.register(pipe, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(kept[process.stdout]), bytes(kept[process.stderr]), "time"
            for key, _ in selector.select(timeout=left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                total += len(chunk)
                buffer = kept[key.fileobj]
                buffer += chunk
                del buffer[:-4 * OUTPUT_LIMIT]
                if total > max_output:
                    return bytes(kept[process.stdout]), bytes(kept[process.stderr]), "output"
    try:
        process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return bytes(kept[process.stdout]), bytes(kept[process.stderr]), "time"
    return bytes(kept[process.stdout]), bytes(kept[process.stderr]), ""


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
    if last.startswith(("PermissionError", "FileNotFoundError", "OSError: [Errno 30]")) and "/" in last:
        return "filesystem", last.split(": ", 1)[-1]  # the host's files are not there, or not its to read
    if last.startswith(("ConnectionRefusedError", "ConnectionResetError")) or "Network is unreachable" in last:
        return "network", last.split(": ", 1)[-1]  # a network namespace of its own: nothing to reach
    if "MemoryError" in stderr:
        return "memory", "memory limit exceeded"
    if returncode == -signal.SIGXFSZ or "File too large" in stderr:
        return "file_size", "file size limit exceeded"
    if "BlockingIOError" in stderr and "Resource temporarily unavailable" in stderr:
        return "process", "process limit reached"
    if returncode != 0:
        return "error", last or f"exit status {returncode}"
    return "ok", ""


def _bubblewrap(workdir: Path) -> list[str]:
    """The command prefix that runs a program in `workdir` under bubblewrap; [] when bubblewrap cannot run here
    (said once)."""
    if not _bubblewrap_works():
        return []
    return [*_bubblewrap_mounts(), "--bind", str(workdir), str(workdir), "--chdir", str(workdir), "--",
            *_as_nobody()]


@functools.lru_cache(maxsize=1)
def _bubblewrap_mounts() -> tuple[str, ...]:
    """bwrap and everything it sets up but the working folder; () without bwrap (or setpriv, as root)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None or (os.getuid() == 0 and shutil.which("setpriv") is None):
        return ()
    # root needs no user namespace to mount, and must not get one (its files would still see uid 0)
    namespaces = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"] \
        if os.getuid() == 0 else ["--unshare-all"]
    args = [bwrap, *namespaces, "--die-with-parent", "--new-session", "--ro-bind", "/", "/", "--dev", "/dev",
            "--proc", "/proc", "--tmpfs", "/tmp"]
    for hidden in HIDDEN:
        if Path(hidden).is_dir():
            args += ["--tmpfs", hidden]
    covered = (*HIDDEN, "/tmp")
    for folder in _interpreter_folders():  # an interpreter inside a hidden home or /tmp stays readable
        if any(folder == Path(h) or Path(h) in folder.parents for h in covered):
            args += ["--ro-bind", str(folder), str(folder)]
    return tuple(args)


def _as_nobody() -> list[str]:
    """Inside bubblewrap, root becomes the host's unprivileged `nobody` before the interpreter starts."""
    if os.getuid() != 0:
        return []
    return [shutil.which("setpriv") or "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            "--inh-caps=-all"]


def _interpreter_folders() -> list[Path]:
    import sysconfig

    folders = {Path(sys.prefix), Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(),
               Path(sysconfig.get_paths()["stdlib"]).resolve(), Path(sys.executable).parent,
               Path(sys.executable).resolve().parent}
    return sorted(folders)


@functools.lru_cache(maxsize=1)
def _bubblewrap_works() -> bool:
    mounts = _bubblewrap_mounts()
    if mounts:
        probe = subprocess.run([*mounts, "--", *_as_nobody(), sys.executable, "-I", "-c", "pass"],
                               capture_output=True)
        if probe.returncode == 0:
            return True
        reason = probe.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        log.warning("sandbox: bubblewrap cannot run here (%s); code verifiers use unshare and an audit hook",
                    reason[0])
    else:
        log.warning("sandbox: bubblewrap is not installed (Debian: apt-get install bubblewrap; scripts/setup.sh "
                    "does it where it can); code verifiers use unshare and an audit hook")
    return False


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
