"""Find what to load in a path: a bundle folder (manifest.json), a bare .gguf file or a bare ONNX folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime.manifest import MANIFEST_NAME, BundleError, Manifest, read_manifest, verify_files

ONNX_MODEL_NAME = "model.onnx"
GENAI_CONFIG = "genai_config.json"  # an onnxruntime-genai model folder


@dataclass
class ResolvedBundle:
    root: Path
    manifest: Manifest
    gguf: Path | None  # the GGUF the llama.cpp backend loads
    onnx: Path | None  # the .onnx file the onnxruntime backend loads (tokenizer etc. beside it)
    onnx_genai: Path | None = None  # the onnxruntime-genai model folder (genai_config.json, model.onnx, tokenizer)
    lora_base: Path | None = None  # the unmerged base GGUF a shipped LoRA adapter applies to
    lora_adapter: Path | None = None  # that adapter (GGUF)
    lora_base_sha256: str | None = None  # experts whose bases hash alike share one loaded base

    def model_for(self, backend: str) -> Path:
        path = {"gguf": self.gguf, "onnx": self.onnx, "onnx-genai": self.onnx_genai}.get(backend)
        if path is None:
            have = [name for name, p in (("gguf", self.gguf), ("onnx-genai", self.onnx_genai), ("onnx", self.onnx))
                    if p is not None]
            raise BundleError(f"{self.root} has no {backend} model (it has: {', '.join(have) or 'none'}); "
                              f"pass backend='auto' or one of those")
        return path


def resolve_bundle(path: str | Path, verify: bool = True) -> ResolvedBundle:
    """Locate the model files under `path`; for a bundle, check every file's sha256 first."""
    path = Path(path).expanduser()
    if not path.exists():
        raise BundleError(f"{path} does not exist: pass a bundle folder, a .gguf file or an ONNX folder")
    if path.is_file():
        if path.suffix == ".onnx":  # one variant of an ONNX folder (model_int8.onnx beside model.onnx)
            return ResolvedBundle(path.parent, Manifest(name=path.parent.name), gguf=None, onnx=path)
        if path.suffix != ".gguf":
            raise BundleError(f"{path} is not a .gguf or .onnx file: pass a bundle folder, a .gguf file or an ONNX folder")
        return ResolvedBundle(path.parent, Manifest(name=path.stem), gguf=path, onnx=None)
    if (path / MANIFEST_NAME).is_file():
        return _from_manifest(path, verify)
    if (path / GENAI_CONFIG).is_file():
        return ResolvedBundle(path, Manifest(name=path.name), gguf=None, onnx=None, onnx_genai=path)
    if (path / ONNX_MODEL_NAME).is_file():
        return ResolvedBundle(path, Manifest(name=path.name), gguf=None, onnx=path / ONNX_MODEL_NAME)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ResolvedBundle(path, Manifest(name=ggufs[0].stem), gguf=ggufs[0], onnx=None)
    raise BundleError(f"{path} holds no {MANIFEST_NAME}, no {ONNX_MODEL_NAME} and not exactly one .gguf: "
                      "pass a bundle folder made by `kit export`, a .gguf file or an ONNX folder")


def _from_manifest(root: Path, verify: bool) -> ResolvedBundle:
    manifest = read_manifest(root)
    if verify:
        verify_files(root, manifest)
    ggufs = manifest.files_of_kind("gguf")
    onnx = manifest.files_of_kind("onnx")
    genai = manifest.files_of_kind("onnx-genai")
    if not ggufs and not onnx and not genai:
        raise BundleError(f"{root / MANIFEST_NAME} lists no gguf or onnx model file; re-export the bundle")
    # The manifest lists shipped files in order of preference: the first of each kind is loaded.
    bases, adapters = manifest.files_of_kind("gguf-base"), manifest.files_of_kind("gguf-adapter")
    lora = bases and adapters
    return ResolvedBundle(root, manifest, gguf=root / ggufs[0].path if ggufs else None,
                          onnx=root / onnx[0].path if onnx else None,
                          onnx_genai=(root / genai[0].path).parent if genai else None,
                          lora_base=root / bases[0].path if lora else None,
                          lora_adapter=root / adapters[0].path if lora else None,
                          lora_base_sha256=bases[0].sha256 if lora else None)
