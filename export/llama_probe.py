"""Child-process probe of a GGUF in llama.cpp: load, tokenize, greedy-decode and score token sequences.

Run as `python llama_probe.py REQUEST.json RESULT.json`. It lives in its own process because llama.cpp
aborts the whole process on some broken GGUFs (e.g. std::out_of_range in byte_to_token on the first
tokenize); the parent sees a non-zero exit instead of dying. Imports llama_cpp and numpy only.

REQUEST: {"model": path, "n_ctx": int, "n_threads": int|null, "tokenize": [text, ...],
          "greedy": [{"ids": [...], "n": int}, ...], "score": [[id, ...], ...],
          "kl": [{"ids": [[top-k id, ...] per position], "logp": [[log-prob, ...] per position]} per score row]}
RESULT:  {"tokens": [[id, ...]], "greedy": [[id, ...]], "score": [{"nll": [...], "argmax": [...], "kl": [...]}]}
"""

from __future__ import annotations

import json
import os
import sys


def _log_softmax_rows(logits):
    import numpy as np

    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def kl_rows(top_ids, top_logp, logp) -> list:
    """KL(reference || this model) per position over the reference's top-k tokens plus a rest bucket; `logp`: this
    model's log-probabilities, one numpy row per position (export.verify uses it for ONNX too)."""
    import math

    import numpy as np

    out = []
    for ids, ref, row in zip(top_ids, top_logp, logp):
        p, q = np.exp(np.asarray(ref)), np.exp(row[ids])
        p_rest, q_rest = max(1.0 - p.sum(), 1e-12), max(1.0 - q.sum(), 1e-12)
        q = np.maximum(q, 1e-30)
        out.append(float((p * (np.log(p) - np.log(q))).sum() + p_rest * (math.log(p_rest) - math.log(q_rest))))
    return out


def probe(request: dict) -> dict:
    import numpy as np
    from llama_cpp import Llama

    print("stage: load", flush=True)
    llm = Llama(model_path=request["model"], n_ctx=request["n_ctx"], n_batch=min(512, request["n_ctx"]),
                logits_all=True, verbose=False, n_threads=request.get("n_threads"), seed=0)
    print("stage: tokenize", flush=True)
    tokens = [llm.tokenize(text.encode("utf-8"), add_bos=True, special=True) for text in request.get("tokenize", [])]
    print("stage: greedy", flush=True)
    greedy = []
    for item in request.get("greedy", []):
        llm.reset()
        llm.eval(item["ids"])
        out: list[int] = []
        for _ in range(item["n"]):
            next_id = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(next_id)
            llm.eval([next_id])
        greedy.append(out)
    print("stage: score", flush=True)
    scores = []
    references = request.get("kl", [])
    for number, ids in enumerate(request.get("score", [])):
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)
        logp = _log_softmax_rows(logits)
        targets = np.asarray(ids[1:])
        score = {"nll": (-logp[np.arange(len(targets)), targets]).tolist(), "argmax": logits.argmax(axis=-1).tolist()}
        if number < len(references):
            score["kl"] = kl_rows(references[number]["ids"], references[number]["logp"], logp)
        scores.append(score)
    return {"tokens": tokens, "greedy": greedy, "score": scores}


def main(argv: list[str]) -> None:
    here = os.path.dirname(os.path.abspath(__file__))  # run as a script: keep export/ modules off the path
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    request_path, result_path = argv
    with open(request_path, encoding="utf-8") as handle:
        request = json.load(handle)
    result = probe(request)
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    sys.stdout.flush()
    os._exit(0)  # skip llama-cpp-python's finalizers, which can fail at interpreter shutdown


if __name__ == "__main__":
    main(sys.argv[1:])
