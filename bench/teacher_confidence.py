"""How sure the teacher was of the labels a build kept, and which labels the `confident` verifier would cut:
the local llama_cpp teacher answers every sample's input of a finished build again (the same prompt, schema and
seed as the generate stage, so the same answer at the same temperature), reporting the least probability it
gave a token of its answer (kit.distill.critic.confident). Prints how many samples fall under each threshold,
the cut samples with their labels, and the labels that moved (a sampled answer can differ from the kept one).

    .venv/bin/python bench/teacher_confidence.py examples/tool-calling/recipe.yaml --source runs/tool-calling \
        [--thresholds 0.3,0.5,0.7] [--limit 200]

Reads only the build's samples.jsonl; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kit.distill.critic.confident import answer_confidence  # noqa: E402
from kit.distill.prompts import (answer_messages, answer_schema, parse_answer, plan_item, request_seed,  # noqa: E402
                                 round_role)
from kit.distill.teachers import make_teacher  # noqa: E402
from kit.recipe.loader import load_recipe  # noqa: E402
from kit.recipe.stages import generate_config  # noqa: E402


async def probe(config, rows: list[dict]) -> list[dict]:
    teacher = make_teacher(config.teacher, None, token_probs=True)
    params = {} if config.teacher.answer_temperature is None else {"temperature": config.teacher.answer_temperature}

    async def one(row: dict) -> dict:
        item = plan_item(config, row["index"], [], {})
        reply = await teacher.complete(answer_messages(config, item, row["input"]),
                                       answer_schema(config, row["input"]),
                                       teacher.sampling(request_seed(config.data.seed, row["index"],
                                                                     round_role(config, "answer"), 0), **params))
        least = answer_confidence(reply.token_probs)
        try:
            again = parse_answer(config, reply.text).output
        except Exception:  # noqa: BLE001 - reported as a moved label
            again = reply.text
        return {"input": row["input"], "label": row["output"], "again": again,
                "least_p": least[0] if least else None, "token": least[1] if least else ""}

    try:
        return await asyncio.gather(*(one(row) for row in rows))
    finally:
        await teacher.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("--source", required=True, help="a finished build's run folder (runs/<task>)")
    parser.add_argument("--thresholds", default="0.3,0.5,0.7")
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()
    config = generate_config(load_recipe(args.recipe))
    rows = [json.loads(line) for line in (Path(args.source) / "data" / "samples.jsonl").read_text().splitlines()]
    rows = rows[:args.limit] if args.limit else rows
    started = time.time()
    out = asyncio.run(probe(config, rows))
    seconds = time.time() - started
    known = [r for r in out if r["least_p"] is not None]
    print(f"{len(out)} samples answered again in {seconds:.0f}s; {len(known)} with token probabilities; "
          f"{sum(r['again'] != r['label'] for r in out)} answers differ from the kept label")
    print("\n| min_p | cut | share |\n| --- | --- | --- |")
    for threshold in (float(t) for t in args.thresholds.split(",")):
        cut = sum(r["least_p"] < threshold for r in known)
        print(f"| {threshold} | {cut} | {cut / max(1, len(known)):.0%} |")
    print("\nleast sure first (p, token, input -> label):")
    for r in sorted(known, key=lambda r: r["least_p"])[:60]:
        moved = "" if r["again"] == r["label"] else f"   (again: {r['again']})"
        print(f"{r['least_p']:.2f} {r['token']!r:>14}  {r['input']} -> {r['label']}{moved}")


if __name__ == "__main__":
    main()
