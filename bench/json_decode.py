"""JSON-Schema-constrained decoding: llama-cpp-python's grammar on every vocabulary entry at every step vs
the runtime's grammar-last sampler (llama.cpp's own order: sample, check the one token, correct if needed).

    .venv/bin/python bench/json_decode.py [--model smollm2-135m-instruct] [--threads 2] [--rounds 3]

Same GGUF, same prompts (the tool-calling example's held-out requests), the tool-calling example's schema,
greedy, one process; the two samplers run back to back in rotating order per prompt so machine load hits both
alike. Prints decode tokens/s per sampler (median over runs), the ratio, and whether outputs were identical.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EXAMPLE = ROOT / "examples" / "tool-calling"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model-store name or .gguf path")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=6)
    args = parser.parse_args()

    import llama_cpp
    from llama_cpp.llama_grammar import LlamaGrammar

    from kit.models.reference import resolve_model
    from runtime.backends.llama_sampling import lazy_grammar_llama_class

    path = str(resolve_model(args.model).gguf())
    schema = json.loads((EXAMPLE / "schema.json").read_text())
    grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    requests = [json.loads(line)["input"] for line in (EXAMPLE / "eval.jsonl").read_text().splitlines()[: args.prompts]]
    models = {"grammar-everywhere": llama_cpp.Llama(model_path=path, n_ctx=1024, n_threads=args.threads, verbose=False),
              "grammar-last": lazy_grammar_llama_class()(model_path=path, n_ctx=1024, n_threads=args.threads,
                                                         verbose=False)}
    speed: dict[str, list[float]] = {name: [] for name in models}
    same = 0
    total = 0
    for round_ in range(args.rounds):
        for i, request in enumerate(requests):
            order = list(models) if (round_ + i) % 2 == 0 else list(reversed(models))
            texts = {}
            for name in order:
                llm = models[name]
                llm.reset()
                messages = [{"role": "system", "content": "Reply with one JSON tool call."},
                            {"role": "user", "content": request}]
                first = last = None
                pieces = []
                tokens = 0
                for chunk in llm.create_chat_completion(messages=messages, grammar=grammar, temperature=0.0,
                                                        max_tokens=96, stream=True):
                    piece = chunk["choices"][0]["delta"].get("content")
                    if piece:
                        now = time.perf_counter()
                        first = first or now
                        last = now
                        tokens += 1
                        pieces.append(piece)
                texts[name] = "".join(pieces)
                if tokens > 1 and last > first:
                    speed[name].append((tokens - 1) / (last - first))
            total += 1
            same += texts["grammar-everywhere"] == texts["grammar-last"]
    print(f"model {args.model}, {len(requests)} prompts x {args.rounds} rounds, {args.threads} threads, greedy")
    print(f"{'sampler':<20} decode tok/s (median)")
    for name, values in speed.items():
        print(f"{name:<20} {statistics.median(values):8.1f}")
    ratio = statistics.median(speed["grammar-last"]) / statistics.median(speed["grammar-everywhere"])
    print(f"ratio grammar-last / grammar-everywhere: {ratio:.2f}; identical outputs: {same}/{total}")
    for llm in models.values():
        llm.close()


if __name__ == "__main__":
    main()
