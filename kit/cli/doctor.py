"""`kit doctor`: what this machine offers microkit (versions, CPU, GPU, llama.cpp build, cache)."""

from __future__ import annotations

import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from export.llama_cpp_tools import TOOLS, tool
from kit.core import settings
from kit.core.errors import UserError
from kit.core.version import __version__

PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "optimum", "optimum-onnx", "onnx",
            "onnxruntime", "gguf", "llama-cpp-python", "tokenizers", "fastapi", "uvicorn", "pydantic", "typer")
CPU_FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx_vnni", "amx_tile", "neon", "asimd")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def cpu_features() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return [platform.processor() or platform.machine()]
    flags: set[str] = set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return [f for f in CPU_FEATURES if f in flags]


def llama_cpp_build() -> str:
    try:
        import llama_cpp
    except ImportError:
        return "not installed"
    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    backends = [name for name in ("CUDA", "METAL", "VULKAN", "HIP", "SYCL") if name in info.upper()]
    gpu = "GPU offload: yes" if llama_cpp.llama_supports_gpu_offload() else "GPU offload: no (CPU build)"
    return f"{gpu}; backends: {', '.join(backends) or 'CPU'}"


def llama_cpp_tools() -> str:
    """Which of llama.cpp's own tools (importance-matrix quantization) setup has built."""
    try:
        built = [name for name in TOOLS if tool(name) is not None]
    except UserError as err:
        return str(err)
    missing = [name for name in TOOLS if name not in built]
    return ", ".join(built) + (f"; not built: {', '.join(missing)} (run scripts/setup.sh)" if missing else "") \
        if built else "not built (run scripts/setup.sh): quantization without an importance matrix"


def torch_gpu() -> str:
    try:
        import torch
    except ImportError:
        return "torch not installed"
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"CUDA {torch.version.cuda}: {', '.join(names)}"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "Apple MPS"
    return "none (CPU only)"


def onnxruntime_providers() -> str:
    try:
        import onnxruntime
    except ImportError:
        return "not installed"
    return ", ".join(onnxruntime.get_available_providers())


def report() -> list[tuple[str, str]]:
    home = settings.microkit_home()
    probe = home if home.exists() else Path.home()
    free_gib = shutil.disk_usage(probe).free / 2**30
    rows = [
        ("microkit", __version__),
        ("python", f"{sys.version.split()[0]} ({sys.executable})"),
        ("platform", f"{platform.system()} {platform.machine()}"),
        ("cpu features", ", ".join(cpu_features()) or "unknown"),
        ("llama.cpp build", llama_cpp_build()),
        ("llama.cpp tools", llama_cpp_tools()),
        ("torch GPU", torch_gpu()),
        ("onnxruntime providers", onnxruntime_providers()),
        ("cache", str(home)),
        ("free disk at cache", f"{free_gib:.1f} GiB"),
    ]
    rows += [(name, version) for name, version in package_versions().items()]
    return rows


def register(app: typer.Typer) -> None:
    app.command()(doctor)


def doctor() -> None:
    """Python, packages, CPU features, GPU and llama.cpp build, cache and free disk."""
    table = Table("check", "result", show_header=True)
    for key, value in report():
        table.add_row(key, value)
    Console().print(table)
