"""Export verification: every artifact against the merged model (tokens, greedy output, top-1, perplexity, and
the KL divergence of its next-token distribution from the merged model's).

KL is measured as llama.cpp's `llama-perplexity --kl-divergence` does, per scored position and averaged, over
the merged model's top KL_TOP_K tokens plus one bucket for the rest of the vocabulary (a coarsened distribution:
a lower bound of the full KL that sees every change in where the probability mass sits)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from export.gguf import probe_gguf
from export.llama_probe import kl_rows
from export.onnx_export import OnnxCausalLM
from kit.core.dataset import with_system_prompt

# A fixed prompt set (task-neutral) and texts that stress tokenization: digits, whitespace, unicode, code.
PROMPTS = (
    "What is the capital of France?",
    "Convert 3 miles to kilometres and answer in JSON.",
    "Write a SQL query that counts the rows of the table users.",
)
TRICKY_TEXTS = (
    "3 33 333 3333 3.14 1,000,000 -42 0x1F",
    "  two leading spaces\n\n\ttab and newlines   trailing  ",
    "Ünïcödé — “quotes” 🚀🦙 我想在apple工作 нещо на Български",
    "def f(x):\n    return {\"k\": [1, 2, x]}  # I've, you'll, he's",
)
SCORE_TEXTS = (
    "The quick brown fox jumps over the lazy dog. A small model runs on a laptop and answers short questions "
    "about the weather, timers and unit conversions without sending anything to a server.",
    "SELECT name, COUNT(*) AS n FROM orders WHERE created_at >= '2024-01-01' GROUP BY name ORDER BY n DESC;",
    "{\"city\": \"Paris\", \"days\": 3, \"units\": \"metric\", \"tags\": [\"travel\", \"weather\"]}",
    "To convert miles to kilometres, multiply by 1.609. So 3 miles is about 4.83 kilometres.",
)
KL_TOP_K = 64
EXACT_TYPES = {"F32", "F16", "fp32"}  # these must reproduce the merged model's greedy tokens


@dataclass
class Probe:
    """What is compared: texts to tokenize, prompt ids to decode greedily, sequences to score."""

    texts: list[str]
    prompt_ids: list[list[int]]
    score_ids: list[list[int]]
    verify_tokens: int
    eos_id: int | None


@dataclass
class Reference:
    tokens: list[list[int]]
    greedy: list[list[int]]
    nll: list[list[float]]
    argmax: list[list[int]]
    top_ids: list[list[list[int]]] = field(default_factory=list)  # per scored sequence and position: top-k ids
    top_logp: list[list[list[float]]] = field(default_factory=list)  # and their log-probabilities

    @property
    def perplexity(self) -> float:
        return _perplexity(self.nll)


@dataclass
class ArtifactReport:
    name: str
    kind: str  # gguf | onnx | onnx-genai
    quant: str
    path: str
    bytes: int
    status: str = "ok"  # ok | failed
    reasons: list[str] = field(default_factory=list)
    tokenization_identical: bool | None = None
    tokenization_mismatches: int = 0
    greedy_identical: bool | None = None
    greedy_first_divergence: int | None = None
    top1_agreement: float | None = None
    perplexity: float | None = None
    perplexity_ratio: float | None = None
    kl_divergence: float | None = None  # mean over scored positions, nats (see KL_TOP_K)
    kl_divergence_max: float | None = None

    def fail(self, reason: str) -> None:
        self.status = "failed"
        self.reasons.append(reason)


def _perplexity(nll: list[list[float]]) -> float:
    flat = [x for row in nll for x in row]
    return math.exp(sum(flat) / max(len(flat), 1))


def chat_prompt(tokenizer, user: str, system: str | None) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    if tokenizer.chat_template is None:
        return user
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def validation_texts(dataset_dir: Path | None, tokenizer, system: str | None, limit: int,
                     split_name: str = "validation") -> list[str]:
    """Up to `limit` rows of a split (validation by default) rendered as whole conversations (prompt + answer)."""
    if dataset_dir is None or limit == 0 or not Path(dataset_dir).is_dir():
        return []
    from datasets import load_from_disk

    data = load_from_disk(str(dataset_dir))
    split = data[split_name] if split_name in data else None
    if split is None or len(split) == 0:
        return []
    texts = []
    for row in split.select(range(min(limit, len(split)))):
        messages = _row_messages(row, system)
        if messages is None:
            continue
        if tokenizer.chat_template is None:
            texts.append("\n".join(m["content"] for m in messages))
        else:
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
    return texts


def validation_prompts(dataset_dir: Path | None, tokenizer, system: str | None, limit: int) -> list[str]:
    """Up to `limit` validation rows rendered as prompts (every turn but the answer, then the generation prompt)."""
    if dataset_dir is None or limit == 0 or not Path(dataset_dir).is_dir() or tokenizer.chat_template is None:
        return []
    from datasets import load_from_disk

    data = load_from_disk(str(dataset_dir))
    split = data["validation"] if "validation" in data else None
    if split is None:
        return []
    prompts = []
    for row in split.select(range(min(limit, len(split)))):
        messages = _row_messages(row, system)
        if messages and messages[-1]["role"] == "assistant":
            prompts.append(tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True))
    return prompts


def _row_messages(row: dict[str, Any], system: str | None) -> list[dict[str, str]] | None:
    def text(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    if isinstance(row.get("messages"), list):  # with the system prompt the bundle serves
        return with_system_prompt([{"role": m["role"], "content": text(m["content"])} for m in row["messages"]], system)
    for prompt_key, answer_key in (("input", "output"), ("prompt", "completion")):
        if prompt_key in row and answer_key in row:
            head = [{"role": "system", "content": system}] if system else []
            return head + [{"role": "user", "content": text(row[prompt_key])},
                           {"role": "assistant", "content": text(row[answer_key])}]
    if isinstance(row.get("text"), str):
        return [{"role": "user", "content": row["text"]}]
    return None


def build_probe(tokenizer, system: str | None, validation: list[str], verify_tokens: int) -> Probe:
    prompts = [chat_prompt(tokenizer, p, system) for p in PROMPTS]
    texts = [*prompts, *TRICKY_TEXTS, *SCORE_TEXTS, *validation]
    encode = lambda t: tokenizer(t)["input_ids"]  # noqa: E731
    return Probe(texts=texts, prompt_ids=[encode(p) for p in prompts],
                 score_ids=[ids for ids in (encode(t) for t in (*SCORE_TEXTS, *validation)) if len(ids) > 1],
                 verify_tokens=verify_tokens, eos_id=tokenizer.eos_token_id)


def reference_outputs(merged_dir: Path, tokenizer, probe: Probe, threads: int | None = None) -> Reference:
    """The merged model's own tokens, greedy continuations and per-token scores (torch, float32)."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _reference_outputs(merged_dir, tokenizer, probe)
    finally:
        torch.set_num_threads(previous)


def _reference_outputs(merged_dir: Path, tokenizer, probe: Probe) -> Reference:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()

    def logits(ids: list[int]):
        with torch.inference_mode():
            return model(torch.tensor([ids])).logits[0].double()

    greedy = []
    for ids in probe.prompt_ids:
        out: list[int] = []
        with torch.inference_mode():
            step = model(torch.tensor([ids]), use_cache=True)
            for _ in range(probe.verify_tokens):
                out.append(int(step.logits[0, -1].argmax()))
                step = model(torch.tensor([out[-1:]]), past_key_values=step.past_key_values, use_cache=True)
        greedy.append(out)
    nll, argmax, top_ids, top_logp = [], [], [], []
    for ids in probe.score_ids:
        scores = logits(ids)[:-1]
        logp = torch.log_softmax(scores, dim=-1)
        targets = torch.tensor(ids[1:])
        nll.append((-logp[torch.arange(len(targets)), targets]).tolist())
        argmax.append(scores.argmax(dim=-1).tolist())
        top = torch.topk(logp, min(KL_TOP_K, logp.shape[-1]), dim=-1)
        top_ids.append(top.indices.tolist())
        top_logp.append(top.values.tolist())
    return Reference(tokens=[tokenizer(t)["input_ids"] for t in probe.texts], greedy=greedy, nll=nll, argmax=argmax,
                     top_ids=top_ids, top_logp=top_logp)


def _compare(report: ArtifactReport, probe: Probe, ref: Reference, tokens: list[list[int]],
             greedy: list[list[int]] | None, nll: list[list[float]], argmax: list[list[int]],
             max_ppl_ratio: float, min_top1: float, kl: list[float] | None = None) -> ArtifactReport:
    mismatches = sum(a != b for a, b in zip(tokens, ref.tokens)) + abs(len(tokens) - len(ref.tokens))
    report.tokenization_identical, report.tokenization_mismatches = mismatches == 0, mismatches
    if mismatches:
        report.fail(f"tokenization differs from the merged tokenizer on {mismatches} of {len(ref.tokens)} texts")
    if greedy is not None:
        divergence = _first_divergence(ref.greedy, greedy, probe.eos_id)
        report.greedy_identical, report.greedy_first_divergence = divergence is None, divergence
        if divergence is not None:
            report.fail(f"greedy output differs from the merged model's at token {divergence}")
    agree = [a == b for ra, aa in zip(ref.argmax, argmax) for a, b in zip(ra, aa)]
    report.top1_agreement = sum(agree) / max(len(agree), 1)
    report.perplexity = _perplexity(nll)
    report.perplexity_ratio = report.perplexity / ref.perplexity
    if kl:
        report.kl_divergence, report.kl_divergence_max = sum(kl) / len(kl), max(kl)
    if report.quant not in EXACT_TYPES:
        if report.top1_agreement < min_top1:
            report.fail(f"top-1 agreement {report.top1_agreement:.3f} < {min_top1}")
        if report.perplexity_ratio > max_ppl_ratio:
            report.fail(f"perplexity ratio {report.perplexity_ratio:.3f} > {max_ppl_ratio}")
    return report


def _first_divergence(expected: list[list[int]], actual: list[list[int]], eos_id: int | None) -> int | None:
    """First differing position over all prompts (compared up to and including the reference's EOS)."""
    for want, have in zip(expected, actual):
        stop = want.index(eos_id) + 1 if eos_id in want else len(want)
        for i in range(stop):
            if i >= len(have) or want[i] != have[i]:
                return i
    return None


def verify_gguf(path: Path, quant: str, probe: Probe, ref: Reference, max_ppl_ratio: float,
                min_top1: float, threads: int | None = None) -> ArtifactReport:
    report = ArtifactReport(name=path.name, kind="gguf", quant=quant, path=str(path), bytes=path.stat().st_size)
    longest = max(len(ids) for ids in [*probe.prompt_ids, *probe.score_ids]) + probe.verify_tokens
    request = {"tokenize": probe.texts, "score": probe.score_ids, "n_ctx": max(256, longest + 8),
               "kl": [{"ids": ids, "logp": logp} for ids, logp in zip(ref.top_ids, ref.top_logp)],
               "n_threads": threads,
               "greedy": [{"ids": ids, "n": probe.verify_tokens} for ids in probe.prompt_ids] if quant in EXACT_TYPES else []}
    result = probe_gguf(path, request)
    if not result.ok:
        report.fail(result.error)
        return report
    data = result.result
    kl = [x for s in data["score"] for x in s.get("kl", [])]
    return _compare(report, probe, ref, data["tokens"], data["greedy"] or None,
                    [s["nll"] for s in data["score"]], [s["argmax"] for s in data["score"]], max_ppl_ratio, min_top1,
                    kl)


def verify_onnx(path: Path, quant: str, probe: Probe, ref: Reference, max_ppl_ratio: float,
                min_top1: float, threads: int | None = None) -> ArtifactReport:
    from tokenizers import Tokenizer

    size = sum(p.stat().st_size for p in path.parent.glob(f"{path.name}*"))
    report = ArtifactReport(name=f"onnx/{path.name}", kind="onnx", quant=quant, path=str(path), bytes=size)
    try:
        tokenizer = Tokenizer.from_file(str(path.parent / "tokenizer.json"))
        model = OnnxCausalLM(path, threads)
    except Exception as err:  # an unloadable artifact is a verification result, not a crash
        report.fail(f"onnxruntime could not load it: {err}")
        return report
    tokens = [tokenizer.encode(t).ids for t in probe.texts]
    greedy = [model.greedy(ids, probe.verify_tokens) for ids in probe.prompt_ids] if quant in EXACT_TYPES else None
    nll, argmax, kl = _score_sequences(model.logits, probe, ref)
    return _compare(report, probe, ref, tokens, greedy, nll, argmax, max_ppl_ratio, min_top1, kl)


def _score_sequences(logits_of, probe: Probe, ref: Reference) -> tuple[list, list, list]:
    """Per scored sequence: the next-token NLL and argmax at each position, and the KL rows against the reference."""
    import numpy as np

    nll, argmax, kl = [], [], []
    for number, ids in enumerate(probe.score_ids):
        logits = np.asarray(logits_of(ids)[:-1], dtype=np.float64)
        shifted = logits - logits.max(axis=-1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        nll.append((-logp[np.arange(len(ids) - 1), ids[1:]]).tolist())
        argmax.append(logits.argmax(axis=-1).tolist())
        if ref.top_ids:
            kl += kl_rows(ref.top_ids[number], ref.top_logp[number], logp)
    return nll, argmax, kl


def verify_genai(folder: Path, variant: str, probe: Probe, ref: Reference, max_ppl_ratio: float,
                 min_top1: float, threads: int | None = None) -> ArtifactReport:
    """An onnxruntime-genai model folder, through onnxruntime-genai itself (its tokenizer, its generator)."""
    from export.onnx_genai import GenaiCausalLM

    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    report = ArtifactReport(name=f"{folder.name}", kind="onnx-genai", quant=variant, path=str(folder), bytes=size)
    try:
        model = GenaiCausalLM(folder)
    except Exception as err:  # an unloadable artifact is a verification result, not a crash
        report.fail(f"onnxruntime-genai could not load it: {err}")
        return report
    tokens = [model.encode(t) for t in probe.texts]
    greedy = [model.greedy(ids, probe.verify_tokens) for ids in probe.prompt_ids] if variant in EXACT_TYPES else None
    nll, argmax, kl = _score_sequences(model.logits, probe, ref)
    return _compare(report, probe, ref, tokens, greedy, nll, argmax, max_ppl_ratio, min_top1, kl)


def write_verify_json(path: Path, ref: Reference, probe: Probe, reports: list[ArtifactReport]) -> Path:
    payload = {
        "reference": {"model": "merged (transformers, float32)", "perplexity": ref.perplexity,
                      "texts": len(probe.texts), "prompts": len(probe.prompt_ids),
                      "scored_sequences": len(probe.score_ids), "verify_tokens": probe.verify_tokens},
        "artifacts": [asdict(r) for r in reports],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def verify_table(reports: list[ArtifactReport], reference_ppl: float):
    """A rich table of the verification (one row per artifact; reasons for failures in the caption)."""
    from rich.table import Table

    table = Table(title=f"export verification (merged model perplexity {reference_ppl:.3f})",
                  caption="\n".join(f"{r.name}: {'; '.join(r.reasons)}" for r in reports if r.reasons) or None)
    table.add_column("artifact", no_wrap=True)
    for name in ("size", "tokens", "greedy", "top-1", "ppl", "ppl ratio", "KL", "status"):
        table.add_column(name, no_wrap=True,
                         justify="right" if name in ("size", "top-1", "ppl", "ppl ratio", "KL") else "left")
    yes_no = {True: "same", False: "DIFF", None: "-"}
    for r in reports:
        table.add_row(r.name, f"{r.bytes / 1e6:.1f} MB", yes_no[r.tokenization_identical], yes_no[r.greedy_identical],
                      "-" if r.top1_agreement is None else f"{r.top1_agreement:.3f}",
                      "-" if r.perplexity is None else f"{r.perplexity:.3f}",
                      "-" if r.perplexity_ratio is None else f"{r.perplexity_ratio:.4f}",
                      "-" if r.kl_divergence is None else f"{r.kl_divergence:.4f}",
                      "[green]ok[/green]" if r.status == "ok" else "[red]failed[/red]")
    return table
