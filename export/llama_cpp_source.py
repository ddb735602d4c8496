"""llama.cpp's own GGUF converter, taken from the cached source release of the pinned llama-cpp-python."""

from __future__ import annotations

import shutil
import tarfile
from importlib import metadata
from pathlib import Path

from kit.core import settings
from kit.core.errors import UserError
from kit.core.files import atomic_output

CONVERTER_MEMBERS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/")


def llama_cpp_version() -> str:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        raise UserError("llama-cpp-python is not installed: run `bash scripts/setup.sh`") from None


def converter_root(version: str | None = None) -> Path:
    """Folder holding convert_hf_to_gguf.py, conversion/ and gguf-py/ (extracted once from the sdist)."""
    version = version or llama_cpp_version()
    out = settings.sources_dir() / f"llama.cpp-{version}"
    if (out / "convert_hf_to_gguf.py").is_file() and (out / "convert_lora_to_gguf.py").is_file():
        return out
    sdist = settings.sources_dir() / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        raise UserError(f"the llama-cpp-python {version} source release is not cached at {sdist}: "
                        "run `bash scripts/setup.sh` (it downloads and keeps it)")
    with atomic_output(out) as tmp:
        _extract_converter(sdist, f"llama_cpp_python-{version}/vendor/llama.cpp/", tmp)
        if not (tmp / "convert_hf_to_gguf.py").is_file():
            raise UserError(f"{sdist} carries no vendor/llama.cpp/convert_hf_to_gguf.py; delete it and rerun setup")
    return out


def _extract_converter(sdist: Path, prefix: str, out: Path) -> None:
    """The converter's files (CONVERTER_MEMBERS) under `prefix` in the sdist, written below `out`."""
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            if not member.name.startswith(prefix) or not member.isfile():
                continue
            relative = member.name[len(prefix):]
            if not relative.startswith(CONVERTER_MEMBERS):
                continue
            target = out / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.extractfile(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
