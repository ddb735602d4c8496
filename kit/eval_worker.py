"""One evaluation target in its own process: predictions, latency, decode speed and peak memory.

Run as `python -m kit.eval_worker SPEC.json OUT.json`; a separate process per target keeps peak RSS honest.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def _messages(spec: dict[str, Any], case_input: str) -> list[dict[str, str]]:
    """System prompt, the spec's few-shot turns (the teacher's seeds; none for students), then the input."""
    messages = [{"role": "system", "content": spec["system_prompt"]}] if spec.get("system_prompt") else []
    return messages + spec.get("fewshot", []) + [{"role": "user", "content": case_input}]


def predict_expert(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """GGUF or ONNX through the runtime, as an app would run it (JSON constrained where the backend can)."""
    from runtime import Expert
    from runtime.params import GenerationStats

    rows = []
    with Expert.load(spec["path"], backend=spec["backend"], n_ctx=spec.get("n_ctx", 2048),
                     n_threads=spec.get("threads"), verify=False) as expert:
        constraint = {}
        if spec.get("schema") is not None and expert.backend.constrains_json:
            constraint = {"json_schema": spec["schema"]}
        for case_input in spec["inputs"]:
            stats = GenerationStats()
            params = expert.params(max_tokens=spec["max_new_tokens"], temperature=0.0, **constraint)
            start = time.perf_counter()
            first = None
            pieces = []
            for piece in expert.generate(expert.render(_messages(spec, case_input)), params, stats):
                first = first or time.perf_counter()
                pieces.append(piece)
            rows.append(_row("".join(pieces), start, first, stats.completion_tokens))
    return rows


def predict_hf(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """A transformers model (base student or merged student), greedy, eager PyTorch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    tokenizer = AutoTokenizer.from_pretrained(spec["path"])
    model = AutoModelForCausalLM.from_pretrained(spec["path"], dtype=torch.float32).eval()
    rows = []
    for case_input in spec["inputs"]:
        ids = tokenizer.apply_chat_template(_messages(spec, case_input), add_generation_prompt=True,
                                            return_tensors="pt")
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=spec["max_new_tokens"],
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        new = out[0][ids.shape[1]:]
        rows.append(_row(tokenizer.decode(new, skip_special_tokens=True), start, None, int(new.shape[0])))
    return rows


def predict_teacher(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The recipe's teacher, through the same backends generation uses (no request cache: fresh answers).
    Requests go out `teacher.concurrency` at a time, as in generation, so the teacher's times are a batch's
    (the report gives its throughput, not a single request's latency)."""
    import asyncio

    from kit.recipe import TeacherConfig
    from kit.teachers import make_teacher

    config = TeacherConfig.model_validate(spec["teacher"])

    async def answer_all() -> list[dict[str, Any]]:
        client = make_teacher(config, None)
        params = client.sampling(0, temperature=0.0, max_tokens=spec["max_new_tokens"])

        async def answer(case_input: str) -> dict[str, Any]:
            start = time.perf_counter()
            completion = await client.complete(_messages(spec, case_input), spec.get("schema"), params)
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


def peak_rss_mb() -> float:
    """This process's own peak RSS. Linux carries ru_maxrss over exec (a child started by a 4 GB parent would
    report 4 GB), so VmHWM, which belongs to the process's own memory map, is read first."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


PREDICTORS = {"gguf": predict_expert, "onnx": predict_expert, "hf": predict_hf, "teacher": predict_teacher}


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    started = time.perf_counter()
    rows = PREDICTORS[spec["kind"]](spec)
    result = {"rows": rows, "wall_s": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(),
              "parallel": spec["teacher"].get("concurrency", 1) if spec["kind"] == "teacher" else 1}
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:3])
