"""One evaluation target in its own process: predictions, latency, decode speed and peak memory.

Run as `python -m kit.evaluate.worker SPEC.json OUT.json`; a separate process per target keeps peak RSS honest.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from kit.distill.config import TeacherConfig
from kit.distill.teachers import make_teacher
from runtime import Expert
from runtime.answer_rules import AnswerRules
from runtime.backends.base import default_threads
from runtime.backends.batch_engine import BatchEngine, BatchingUnsupported
from runtime.memory import peak_rss_mb
from runtime.params import GenerationStats


def _messages(spec: dict[str, Any], case_input: str) -> list[dict[str, str]]:
    """System prompt, the spec's few-shot turns (the teacher's seeds; none for students), then the input."""
    messages = [{"role": "system", "content": spec["system_prompt"]}] if spec.get("system_prompt") else []
    return messages + spec.get("fewshot", []) + [{"role": "user", "content": case_input}]


def case_schema(spec: dict[str, Any], case_input: str) -> dict[str, Any] | None:
    """The output schema for one case as the runtime decodes it (runtime.answer_rules): copied fields held to
    the case's own words; a trained student's derived numbers and clock times offered in its own form."""
    return AnswerRules.of(spec).schema(spec.get("schema"), case_input)


def predict_expert(spec: dict[str, Any]) -> dict[str, Any]:
    """GGUF or ONNX through the runtime, as an app would run it (JSON constrained where the backend can). A
    GGUF is timed that way on the first `latency_cases` and scored on every case with `batch` requests decoded
    together (llama.cpp continuous batching: same weights, same grammar, greedy), which is several times faster
    on a CPU; `agree` counts the timed cases whose answers the batched run repeated."""
    timed_inputs = spec["inputs"] if spec["kind"] != "gguf" else spec["inputs"][:spec.get("latency_cases", 16)]
    timed = _timed_expert(spec, timed_inputs)
    peak = peak_rss_mb()  # the runtime's own footprint, before a batch context adds its KV cache
    rows = timed if len(timed) == len(spec["inputs"]) else _batched_gguf(spec)
    if rows is None:  # no chat template in the GGUF to batch with: the rest one at a time as well
        rows = timed = timed + _timed_expert(spec, spec["inputs"][len(timed):])
    return _result(rows, timed, peak)


def _timed_expert(spec: dict[str, Any], inputs: list[str]) -> list[dict[str, Any]]:

    rows = []
    with Expert.load(spec["path"], backend=spec["backend"], n_ctx=spec.get("n_ctx", 2048),
                     n_threads=spec.get("threads"), verify=False) as expert:
        constrain = spec.get("schema") is not None and expert.backend.constrains_json
        for case_input in inputs:
            stats = GenerationStats()
            constraint = {"json_schema": case_schema(spec, case_input)} if constrain else {}
            params = expert.params(max_tokens=spec["max_new_tokens"], temperature=0.0, **constraint)
            start = time.perf_counter()
            first = None
            pieces = []
            for piece in expert.generate(expert.render(_messages(spec, case_input)), params, stats):
                first = first or time.perf_counter()
                pieces.append(piece)
            rows.append(_row("".join(pieces), start, first, stats.completion_tokens))
    return rows


def _batched_gguf(spec: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Every case through one batched llama.cpp context; None when the GGUF has no chat template to batch with."""

    try:
        engine = BatchEngine(spec["path"], parallel=spec.get("batch", 8), n_ctx=spec.get("n_ctx", 2048),
                             n_threads=spec.get("threads") or default_threads())
    except BatchingUnsupported:
        return None
    try:
        params = {"temperature": 0.0, "max_tokens": spec["max_new_tokens"]}
        futures = [engine.submit(_messages(spec, case_input), case_schema(spec, case_input), params)
                   for case_input in spec["inputs"]]
        return [{"text": reply.text, "completion_tokens": reply.completion_tokens} for reply in (f.result() for f in futures)]
    finally:
        engine.close()


def predict_hf(spec: dict[str, Any]) -> dict[str, Any]:
    """A transformers model (base student or merged student), greedy, eager PyTorch: timed one request at a
    time on the first `latency_cases`, scored on every case in left-padded batches of `batch`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    tokenizer = AutoTokenizer.from_pretrained(spec["path"])
    model = AutoModelForCausalLM.from_pretrained(spec["path"], dtype=torch.float32).eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    timed = []
    for case_input in spec["inputs"][:spec.get("latency_cases", 16)]:
        ids = tokenizer.apply_chat_template(_messages(spec, case_input), add_generation_prompt=True,
                                            return_tensors="pt")
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=spec["max_new_tokens"],
                                 do_sample=False, pad_token_id=pad_id)
        new = out[0][ids.shape[1]:]
        timed.append(_row(tokenizer.decode(new, skip_special_tokens=True), start, None, int(new.shape[0])))
    peak = peak_rss_mb()
    if len(timed) == len(spec["inputs"]):
        return _result(timed, timed, peak)
    rows = generate_batched(model, tokenizer, [_messages(spec, case_input) for case_input in spec["inputs"]],
                            spec["max_new_tokens"], spec.get("batch", 8))
    return _result(rows, timed, peak)


def generate_batched(model, tokenizer, conversations: list[list[dict[str, str]]], max_new_tokens: int,
                     batch: int = 8) -> list[dict[str, Any]]:
    """Greedy answers of a transformers model to each conversation, `batch` at a time, padded on the left and
    masked, so each answer is what the model says to it alone: [{"text", "completion_tokens"}]."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = {pad_id, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])}
    rows = []
    size = max(1, batch)
    for begin in range(0, len(conversations), size):
        prompts = [tokenizer.apply_chat_template(messages, add_generation_prompt=True)
                   for messages in conversations[begin:begin + size]]
        width = max(len(ids) for ids in prompts)
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in prompts])
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])
        with torch.inference_mode():
            out = model.generate(input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad_id)
        for sequence in out[:, width:].tolist():
            end = next((i for i, token in enumerate(sequence) if token in stops), len(sequence))
            rows.append({"text": tokenizer.decode(sequence[:end], skip_special_tokens=True), "completion_tokens": end})
    return rows


def _result(rows: list[dict[str, Any]], timed: list[dict[str, Any]], peak: float) -> dict[str, Any]:
    """Scored rows (every case) and timed rows (one request at a time); `agree`: timed answers the scored run
    repeated (the same model greedy, so a difference is float rounding in a batched kernel)."""
    agree = sum(" ".join(a["text"].split()) == " ".join(b["text"].split()) for a, b in zip(timed, rows))
    return {"rows": rows, "timed": timed, "agree": agree, "peak_rss_mb": peak}


def predict_teacher(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The recipe's teacher, through the same backends generation uses (no request cache: fresh answers).
    Requests go out `teacher.concurrency` at a time, as in generation, so the teacher's times are a batch's
    (the report gives its throughput, not a single request's latency)."""
    import asyncio


    config = TeacherConfig.model_validate(spec["teacher"])

    async def answer_all() -> list[dict[str, Any]]:
        client = make_teacher(config, None)
        params = client.sampling(0, temperature=0.0, max_tokens=spec["max_new_tokens"])

        async def answer(case_input: str) -> dict[str, Any]:
            start = time.perf_counter()
            completion = await client.complete(_messages(spec, case_input), case_schema(spec, case_input), params)
            return _row(completion.text, start, None, completion.completion_tokens)

        try:
            await client.backend.check()
            return list(await asyncio.gather(*(answer(case_input) for case_input in spec["inputs"])))
        finally:
            await client.aclose()

    return asyncio.run(answer_all())


def _row(text: str, start: float, first: float | None, tokens: int) -> dict[str, Any]:
    end = time.perf_counter()
    return {"text": text, "seconds": end - start, "first_token_s": (first - start) if first else None,
            "completion_tokens": tokens}


PREDICTORS = {"gguf": predict_expert, "onnx": predict_expert, "onnx-genai": predict_expert, "hf": predict_hf,
              "teacher": predict_teacher}


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    started = time.perf_counter()
    produced = PREDICTORS[spec["kind"]](spec)
    if isinstance(produced, list):  # the teacher: every case in parallel requests, no single-request timing
        produced = {"rows": produced, "peak_rss_mb": peak_rss_mb(), "parallel": spec["teacher"].get("concurrency", 1)}
    rules = AnswerRules.of(spec)
    for row in produced["rows"] + produced.get("timed", []):  # finished as the runtime finishes an answer
        row["text"] = rules.finish(row["text"])
    result = {"parallel": 1, **produced, "wall_s": time.perf_counter() - started}
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:3])
