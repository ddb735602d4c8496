"""The local llama_cpp teacher, one request at a time vs continuous batching of `--parallel` requests.

    .venv/bin/python bench/teacher_batching.py [--model qwen2.5-coder-0.5b-instruct] [--items 12] [--parallel 4]

Replays what generation asks for the tool-calling example (an input request, then its answer request, for
`--items` plan items) through `LlamaCppTeacher` with concurrency 1 (one context per system prompt) and with
concurrency N (one batched context, prefixes shared across slots). Same prompts, same seeds, no request
cache. Prints wall time, generated tokens/s, prompt tokens read and taken from cache, and the speed-up.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="model-store name or .gguf path")
    parser.add_argument("--items", type=int, default=12)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--recipe", default=str(ROOT / "examples" / "tool-calling" / "recipe.yaml"))
    args = parser.parse_args()

    from kit.distill.prompts import (
        answer_messages,
        answer_schema,
        input_messages,
        input_schema,
        parse_input,
        plan_item,
        request_seed,
    )
    from kit.distill.teachers import make_teacher
    from kit.recipe.loader import load_recipe
    from kit.recipe.stages import generate_config

    recipe = load_recipe(Path(args.recipe))
    config = generate_config(recipe)

    async def replay(concurrency: int) -> dict[str, float]:
        teacher_config = config.teacher.model_copy(update={"model": args.model, "concurrency": concurrency})
        client = make_teacher(teacher_config, None)
        await client.backend.check()
        started = time.perf_counter()

        async def item(index: int) -> None:
            plan = plan_item(config, index)
            reply = await client.complete(input_messages(config, plan, False), input_schema(config, False),
                                          client.sampling(request_seed(0, index, "input")))
            task_input, _ = parse_input(config, reply.text, False)
            await client.complete(answer_messages(config, plan, task_input), answer_schema(config),
                                  client.sampling(request_seed(0, index, "answer")))

        slots = asyncio.Semaphore(concurrency + 1)  # as generation runs it: one worker more than slots

        async def bounded(index: int) -> None:
            async with slots:
                try:
                    await item(index)
                except Exception as err:  # a reply that does not parse still cost its tokens
                    print(f"  item {index}: {err}")

        await asyncio.gather(*(bounded(i) for i in range(args.items)))
        wall = time.perf_counter() - started
        engine = getattr(client.backend, "_engine", None)
        figures = {"wall_s": wall, "generated": client.usage.completion_tokens,
                   "prompt_tokens": client.usage.prompt_tokens,
                   "prompt_reused": engine.reused_tokens if engine is not None else None}
        await client.aclose()
        return figures

    results = {}
    for concurrency in (1, args.parallel):
        print(f"concurrency {concurrency} ...", flush=True)
        results[concurrency] = asyncio.run(replay(concurrency))
    print(f"\n{args.model}, {args.items} items (input + answer each) of {Path(args.recipe).parent.name}")
    print(f"{'concurrency':>11} {'wall s':>8} {'gen tok':>8} {'gen tok/s':>10} {'prompt tok':>11} {'from cache':>11}")
    for concurrency, r in results.items():
        reused = "-" if r["prompt_reused"] is None else str(r["prompt_reused"])
        print(f"{concurrency:>11} {r['wall_s']:>8.1f} {r['generated']:>8} {r['generated'] / r['wall_s']:>10.1f} "
              f"{r['prompt_tokens']:>11} {reused:>11}")
    print(f"speed-up (wall time): {results[1]['wall_s'] / results[args.parallel]['wall_s']:.2f}x")


if __name__ == "__main__":
    main()
