"""How llama.cpp is built (scripts/llama_cmake_args.sh) and which cached tools build is used."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AVX2 = "fpu sse2 avx avx2 fma f16c bmi2"
AVX512 = AVX2 + " avx512f avx512cd avx512vl avx512dq avx512bw avx512_vnni avx512_bf16 avx_vnni amx_tile amx_int8 amx_bf16"


def cmake_args(flags: str, tmp_path: Path) -> list[str]:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "llama_cmake_args.sh")], capture_output=True, text=True,
                          check=True, env=os.environ | {"CPUINFO": str(cpuinfo)})
    return done.stdout.split()


def test_llama_cpp_is_built_portable_with_the_avx512_kernels_the_cpu_has_and_never_amx(tmp_path):
    assert cmake_args(AVX2, tmp_path) == ["-DGGML_NATIVE=OFF"]
    wide = cmake_args(AVX512, tmp_path)
    assert wide[0] == "-DGGML_NATIVE=OFF"
    assert {"-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_AVX512_BF16=ON", "-DGGML_AVX_VNNI=ON"} <= set(wide)
    assert not any("AMX" in arg or "VBMI" in arg for arg in wide)  # amx crashes this release; no vbmi listed
    # AVX-512 kernels need the whole base set: avx512f alone turns none of them on
    assert cmake_args(AVX2 + " avx512f avx512_vnni", tmp_path) == ["-DGGML_NATIVE=OFF"]


def test_of_two_cached_tools_builds_the_latest_made_is_used(tmp_path, monkeypatch):
    from export import llama_cpp_tools

    monkeypatch.setattr(llama_cpp_tools, "tools_root", lambda: tmp_path)
    monkeypatch.setattr(llama_cpp_tools, "llama_cpp_version", lambda: "0.3.36")
    assert llama_cpp_tools.tool("llama-quantize") is None
    paths = []
    for key, mtime in (("ffff0000", 1_000_000), ("0000ffff", 2_000_000)):
        path = tmp_path / f"llama.cpp-0.3.36-{key}" / "bin" / "llama-quantize"
        path.parent.mkdir(parents=True)
        path.write_text("")
        os.utime(path, (mtime, mtime))
        paths.append(path)
    other = tmp_path / "llama.cpp-0.3.30-aaaaaaaa" / "bin" / "llama-quantize"  # another version, newer: never
    other.parent.mkdir(parents=True)
    other.write_text("")
    os.utime(other, (3_000_000, 3_000_000))
    assert llama_cpp_tools.tool("llama-quantize") == paths[1]
