"""runtime/backends/base.py: llama.cpp's default thread count is the physical cores this process may use."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from runtime.backends.base import default_threads


@pytest.mark.parametrize(("usable", "physical", "expected"), [
    (8, 4, 4),  # two threads per core: one thread per physical core, not llama-cpp-python's half of 8
    (2, 4, 2),  # pinned to two CPUs of a four-core machine: those two
    (3, None, 3),  # psutil cannot count physical cores here: every usable CPU
])
def test_llama_cpp_threads_default_to_the_usable_physical_cores(monkeypatch, usable, physical, expected):
    psutil = pytest.importorskip("psutil")

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(usable)), raising=False)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: usable if logical else physical)
    assert default_threads() == expected


def test_llama_cpp_threads_default_to_every_usable_cpu_without_psutil(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil raises ImportError
    assert default_threads() == 3


def test_llama_cpp_threads_on_this_machine_are_its_physical_cores_in_this_process_affinity():
    """Counted independently: distinct (physical id, core id) pairs in /proc/cpuinfo among the CPUs we may use."""
    cpuinfo = Path("/proc/cpuinfo")
    if not hasattr(os, "sched_getaffinity") or not cpuinfo.is_file():
        pytest.skip("needs Linux's CPU affinity and /proc/cpuinfo")
    blocks = [dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
              for block in cpuinfo.read_text().split("\n\n") if block.strip()]
    cpus = [{key.strip(): value.strip() for key, value in block.items()} for block in blocks]
    if not cpus or not all("core id" in cpu and "physical id" in cpu for cpu in cpus):
        pytest.skip("/proc/cpuinfo names no core ids here")
    usable = os.sched_getaffinity(0)
    cores = {(cpu["physical id"], cpu["core id"]) for cpu in cpus if int(cpu["processor"]) in usable}
    assert default_threads() == len(cores)
