"""Size and quality per GGUF quantization type: bytes, perplexity ratio to F16, top-1 agreement, wall time.

    .venv/bin/python bench/export_quant_quality.py [--model smollm2-135m-instruct] [--adapter DIR]
                                                   [--types F16,Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0]

Perplexity and next-token top-1 agreement (with the merged float32 model) are measured in llama.cpp on
the repository's own prose (README + DESIGN), cut into 192-token windows. Targets: Q8_0 within 1% of
F16's perplexity, Q4_K_M within 5%.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"Q8_0": 1.01, "Q4_K_M": 1.05}


def corpus_windows(tokenizer, window: int = 192, limit: int = 16) -> list[list[int]]:
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in (REPO / "README.md", REPO / "../shared/DESIGN.md")
                       if p.is_file())
    ids = tokenizer(text)["input_ids"]
    return [ids[i: i + window] for i in range(0, len(ids) - window, window)][:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--adapter", type=Path, default=None)
    parser.add_argument("--types", default="F16,Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here (default: a temp dir)")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table
    from transformers import AutoTokenizer

    from export.gguf import convert_to_gguf, gguf_name, quantize_gguf
    from export.merge import merge_adapter
    from export.verify import Probe, reference_outputs, verify_gguf
    from kit.models.base_model import resolve_base

    console = Console()
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    with tempfile.TemporaryDirectory(prefix="microkit-bench-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        base = resolve_base(args.model)
        merged = merge_adapter(base, args.adapter, work / "merged")
        tokenizer = AutoTokenizer.from_pretrained(merged)
        windows = corpus_windows(tokenizer)
        probe = Probe(texts=[], prompt_ids=[], score_ids=windows, verify_tokens=0, eos_id=tokenizer.eos_token_id)
        reference = reference_outputs(merged, tokenizer, probe, args.threads)
        rows, seconds = {}, {}
        started = time.time()
        f16 = convert_to_gguf(merged, work / gguf_name("F16"), "F16", source_gguf=base.source_gguf)
        seconds["F16"] = time.time() - started
        for quant in types:
            path = f16
            if quant != "F16":
                started = time.time()
                path = quantize_gguf(f16, work / gguf_name(quant), quant, args.threads)
                seconds[quant] = time.time() - started
            rows[quant] = verify_gguf(path, quant, probe, reference, max_ppl_ratio=float("inf"), min_top1=0.0,
                                       threads=args.threads)
        f16_ppl = rows["F16"].perplexity if "F16" in rows else None
        table = Table("type", "bytes", "MB", "ppl", "ppl / F16", "top-1 vs merged", "export s", "target",
                      title=f"{args.model}{' + adapter' if args.adapter else ''}: {len(windows)} windows x 192 tokens, "
                            f"merged fp32 ppl {reference.perplexity:.3f}")
        for quant, report in rows.items():
            ratio = report.perplexity / f16_ppl if f16_ppl else float("nan")
            target = TARGETS.get(quant)
            verdict = "-" if target is None else (f"[green]<= {target}[/green]" if ratio <= target else f"[red]> {target}[/red]")
            table.add_row(quant, f"{report.bytes:,}", f"{report.bytes / 1e6:.1f}", f"{report.perplexity:.4f}",
                          f"{ratio:.4f}", f"{report.top1_agreement:.4f}", f"{seconds[quant]:.1f}", verdict)
        console.print(table)


if __name__ == "__main__":
    main()
