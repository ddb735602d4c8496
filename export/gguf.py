"""GGUF: convert with llama.cpp's own converter, quantize with llama.cpp, probe every file in a child process."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.llama_cpp_source import converter_root
from export.llama_cpp_tools import run_tool
from kit.core.errors import UserError
from kit.core.files import atomic_output
from kit.models.gguf_tokenizer import tokenizer_differences
from runtime.files import PARTIAL_SUFFIX

# Converter --outtype for the unquantized types; every other type is quantized from F16.
CONVERTER_OUTTYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16"}
# Texts every GGUF must tokenize (in a child process) before it is written under its final name.
SMOKE_TEXTS = ("Hello world 123", "<|im_start|>user\nÜber 3.14 ünïcode 🚀 {\"k\": [1, 2]}<|im_end|>\n")
PROBE = Path(__file__).with_name("llama_probe.py")
LAUNCHER = Path(__file__).with_name("convert_launcher.py")


def gguf_name(quant: str) -> str:
    return f"model-{quant}.gguf"


def llama_ftype(quant: str) -> int:
    import llama_cpp

    value = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}", None)
    if value is None:
        raise UserError(f"this llama-cpp-python build has no quantization type {quant}")
    return int(value)


@dataclass
class ProbeResult:
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def probe_gguf(path: Path, request: dict[str, Any], timeout_s: float = 600) -> ProbeResult:
    """Run llama_probe.py on `path` in a child process; a native abort comes back as ok=False."""
    with tempfile.TemporaryDirectory(prefix="microkit-probe-") as tmp:
        request_file, result_file = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request_file.write_text(json.dumps({"model": str(path), "n_ctx": 512, **request}), encoding="utf-8")
        env = os.environ | {"GGML_NO_BACKTRACE": "1"}  # a crash must not spend a minute in gdb
        try:
            done = subprocess.run([sys.executable, str(PROBE), str(request_file), str(result_file)],
                                  capture_output=True, text=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired:
            return ProbeResult(False, error=f"llama.cpp probe timed out after {timeout_s:.0f}s")
        if done.returncode != 0 or not result_file.is_file():
            stage = ([line for line in done.stdout.splitlines() if line.startswith("stage: ")] or ["stage: start"])[-1]
            reason = _exit_reason(done.returncode)
            tail = " | ".join(done.stderr.strip().splitlines()[-2:])[:300]
            return ProbeResult(False, error=f"llama.cpp {reason} at {stage[7:]}: {tail}")
        return ProbeResult(True, json.loads(result_file.read_text(encoding="utf-8")))


def _exit_reason(code: int) -> str:
    if code < 0:
        import signal

        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def check_loads_and_tokenizes(path: Path) -> str | None:
    """None when llama.cpp loads `path` and tokenizes the smoke texts; else why not."""
    probe = probe_gguf(path, {"tokenize": list(SMOKE_TEXTS)}, timeout_s=300)
    if not probe.ok:
        return probe.error
    if any(not ids for ids in probe.result["tokens"]):
        return "llama.cpp tokenized a smoke text to no tokens"
    return None


def convert_to_gguf(hf_dir: Path, out: Path, outtype: str = "F16", pre_tokenizer: str | None = None,
                    source_gguf: Path | None = None) -> Path:
    """Convert an HF folder with llama.cpp's convert_hf_to_gguf.py; refuse a file llama.cpp cannot use.

    pre_tokenizer: llama.cpp pre-tokenizer name written if the converter does not recognise the
    tokenizer. source_gguf: the GGUF the base came from; the result must carry its tokenizer unchanged.
    """
    root = converter_root()
    with atomic_output(out) as partial:
        command = [sys.executable, str(LAUNCHER), str(root), pre_tokenizer or "-", "--",
                   str(hf_dir), "--outfile", str(partial), "--outtype", CONVERTER_OUTTYPES[outtype]]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not partial.is_file():
            tail = "\n".join(done.stderr.strip().splitlines()[-3:])
            hint = (" (set export.gguf_pre_tokenizer to the llama.cpp pre-tokenizer your tokenizer uses, e.g. gpt-2)"
                    if "pre-tokenizer was not recognized" in done.stderr else "")
            raise UserError(f"llama.cpp's converter failed on {hf_dir}{hint}:\n{tail}")
        refuse_unusable(partial, source_gguf)
    return out


def refuse_unusable(path: Path, source_gguf: Path | None = None) -> None:
    """Delete `path` and raise when llama.cpp cannot load and tokenize it or its tokenizer left the source's."""
    problem = check_loads_and_tokenizes(path)
    if problem is None and source_gguf is not None:
        diffs = tokenizer_differences(source_gguf, path)
        if diffs:
            problem = f"its tokenizer differs from the source GGUF's in {', '.join(diffs)}"
    if problem is not None:
        path.unlink(missing_ok=True)
        raise UserError(f"refused to write {path.name.removesuffix(PARTIAL_SUFFIX)}: {problem}")


def quantize_gguf(f16: Path, out: Path, quant: str, threads: int | None = None) -> Path:
    """Quantize an F16 GGUF in process with llama.cpp's llama_model_quantize; probe the result."""
    import logging

    import llama_cpp
    import llama_cpp._logger  # noqa: F401  (installs the log callback that honours this logger's level)

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_ftype(quant)
    params.nthread = threads or 0
    native_log = logging.getLogger("llama-cpp-python")
    level = native_log.level
    with atomic_output(out) as partial:
        native_log.setLevel(logging.ERROR)  # llama.cpp logs every tensor at INFO
        try:
            status = llama_cpp.llama_model_quantize(str(f16).encode(), str(partial).encode(), params)
        finally:
            native_log.setLevel(level)
        if status != 0 or not partial.is_file():
            raise UserError(f"llama.cpp could not quantize {f16.name} to {quant} (status {status})")
        refuse_unusable(partial)
    return out


IMATRIX_FILE = "imatrix.gguf"
IMATRIX_CTX = 128  # calibration chunk length: task rows are short, and each chunk is one forward pass


def uses_imatrix(quant: str) -> bool:
    """Types llama.cpp quantizes with an importance matrix (8-bit and float types ignore one)."""
    return quant not in CONVERTER_OUTTYPES and quant != "Q8_0"


def compute_imatrix(f16: Path, texts: list[str], out: Path, threads: int | None = None) -> Path:
    """llama-imatrix over `texts` (the task's own training rows, rendered as the student sees them)."""
    with tempfile.TemporaryDirectory(prefix="microkit-imatrix-") as tmp:
        calibration = Path(tmp) / "calibration.txt"
        body = "\n".join(texts)
        # llama-imatrix needs at least two chunks; a tiny dataset is repeated to fill them (about 4 chars a token)
        while len(body) < 8 * IMATRIX_CTX * 4:
            body = body + "\n" + body
        calibration.write_text(body, encoding="utf-8")
        written = Path(tmp) / IMATRIX_FILE  # llama-imatrix picks its format by the .gguf extension
        args = ["-m", str(f16), "-f", str(calibration), "-o", str(written), "-c", str(IMATRIX_CTX), "--no-ppl",
                "--parse-special", "-ofreq", "1000000", *(["-t", str(threads)] if threads else [])]
        run_tool("llama-imatrix", args, "computing the importance matrix")
        with atomic_output(out) as partial:
            shutil.move(str(written), partial)
    return out


# llama.cpp gives a tensor whose rows are not a multiple of 256 (the k-quants' block) a fallback type: Q4_K -> Q5_0,
# Q6_K -> Q8_0, but Q5_K -> Q5_1, and Q5_1 with an importance matrix loses a small fine-tune (the 135M tool-calling
# student, 576 wide: Q5_K_M 45.8% / 48.6% exact match on two builds whose F16 scored 70.1% / 72.9%; pinned as below
# with Q5_0 in place of every Q5_1, 65.4% / 67.3%, as Q4_K_M's 66.4% / 67.3%). Those tensors get the replacement.
FALLBACK_REPLACEMENTS = {"Q5_1": "Q5_0"}


def tensor_types(path: Path) -> dict[str, str]:
    """Each tensor's ggml type in a GGUF file, by name."""
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}


def quantize_with_imatrix(f16: Path, out: Path, quant: str, imatrix: Path, threads: int | None = None) -> Path:
    """llama-quantize --imatrix: the weights that matter on the task's data keep more precision. A mixture type
    that fell back to a type in FALLBACK_REPLACEMENTS for some tensors is quantized once more with every tensor's
    type pinned (`--tensor-type-file`) as the first pass chose it, those given the replacement (pinning all of
    them keeps llama.cpp's per-layer choices where they were); a type asked for by name is left as asked."""
    def quantize(partial: Path, pins: Path | None = None) -> None:
        args = ["--imatrix", str(imatrix), *(["--tensor-type-file", str(pins)] if pins else []),
                str(f16), str(partial), quant, *([str(threads)] if threads else [])]
        run_tool("llama-quantize", args, f"quantizing {f16.name} to {quant}")

    with atomic_output(out) as partial, tempfile.TemporaryDirectory(prefix="microkit-quantize-") as tmp:
        quantize(partial)
        chosen = tensor_types(partial)
        if any(kind in FALLBACK_REPLACEMENTS and kind != quant for kind in chosen.values()):
            pins = {name: FALLBACK_REPLACEMENTS.get(kind, kind) for name, kind in chosen.items() if kind != "F32"}
            pin_file = Path(tmp) / "tensor_types.txt"
            pin_file.write_text("".join(f"^{re.escape(name)}$={kind.lower()}\n" for name, kind in pins.items()),
                                encoding="utf-8")
            quantize(partial, pin_file)
        refuse_unusable(partial)
    return out


def make_ggufs(hf_dir: Path, out_dir: Path, quants: list[str], pre_tokenizer: str | None = None,
               source_gguf: Path | None = None, threads: int | None = None,
               calibration: list[str] | None = None) -> dict[str, Path]:
    """F16 (always: every quant derives from it) plus each requested type, as out_dir/model-<TYPE>.gguf. With
    `calibration` texts (and llama.cpp's tools built) the low-bit types are quantized with an importance matrix
    computed on them (out_dir/imatrix.gguf); without, in process by llama_model_quantize."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = {"F16": convert_to_gguf(hf_dir, out_dir / gguf_name("F16"), "F16", pre_tokenizer, source_gguf)}
    imatrix = None
    if calibration and any(uses_imatrix(q) for q in quants):
        imatrix = compute_imatrix(made["F16"], calibration, out_dir / IMATRIX_FILE, threads)
    for quant in dict.fromkeys(quants):
        if quant in made:
            continue
        target = out_dir / gguf_name(quant)
        if quant in CONVERTER_OUTTYPES:
            made[quant] = convert_to_gguf(hf_dir, target, quant, pre_tokenizer, source_gguf)
        elif imatrix is not None and uses_imatrix(quant):
            made[quant] = quantize_with_imatrix(made["F16"], target, quant, imatrix, threads)
        else:
            made[quant] = quantize_gguf(made["F16"], target, quant, threads)
    return made
