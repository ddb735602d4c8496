"""How sure the teacher was of the labels a build kept, and which labels the `confident` verifier would cut:
the local llama_cpp teacher answers every sample's input of a finished build again (the same prompt, schema and
seed as the generate stage, so the same answer at the same temperature), reporting the least probability it
gave a token of its answer (kit.distill.critic.confident). Prints how many samples fall under each threshold,
the cut samples with their labels, and the labels that moved (a sampled answer can differ from the kept one).

    .venv/bin/python bench/teacher_confidence.py examples/tool-calling/recipe.yaml --source runs/tool-calling \
        [--thresholds 0.3,0.5,0.7] [--limit 200]

With `--votes N` (N >= 3) every input is answered N times (seeds 0..N-1, at `--vote-temperature`, default the
recipe's `teacher.answer_temperature`) and voted as `data.answers_per_input: N` would (kit.distill.vote): prints
how many labels the vote would reject (no majority on some field) or change, each with its answers, and what the
extra answers cost in teacher time, so a recipe can see what a vote buys before paying for it in every build.

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
                                 round_role, vote_key)
from kit.distill.teachers import make_teacher  # noqa: E402
from kit.distill.vote import vote  # noqa: E402
from kit.recipe.loader import load_recipe  # noqa: E402
from kit.recipe.stages import generate_config  # noqa: E402


async def probe(config, rows: list[dict], votes: int = 1, vote_temperature: float | None = None) -> list[dict]:
    teacher = make_teacher(config.teacher, None, token_probs=True)
    params = {} if config.teacher.answer_temperature is None else {"temperature": config.teacher.answer_temperature}
    vote_params = params if vote_temperature is None else {"temperature": vote_temperature}

    async def one(row: dict) -> dict:
        item = plan_item(config, row["index"], [], {})
        messages, schema = answer_messages(config, item, row["input"]), answer_schema(config, row["input"])

        def ask(k: int, sampling: dict):
            return teacher.complete(messages, schema, teacher.sampling(
                request_seed(config.data.seed, row["index"], round_role(config, "answer"), k), **sampling))

        reply = await ask(0, params)
        least = answer_confidence(reply.token_probs)
        try:
            again = parse_answer(config, reply.text).output
        except Exception:  # noqa: BLE001 - reported as a moved label
            again = reply.text
        out = {"input": row["input"], "label": row["output"], "again": again,
               "least_p": least[0] if least else None, "token": least[1] if least else ""}
        if votes > 1:
            replies = await asyncio.gather(*(ask(k, vote_params) for k in range(votes)))
            answers = []
            for r in replies:
                try:
                    answers.append(parse_answer(config, r.text))
                except Exception:  # noqa: BLE001 - an unparsable answer is a missing vote, as in the build
                    pass
            result, _ = vote(answers, config.output.format, lambda a: vote_key(config, a))
            out |= {"answers": [a.output for a in answers], "vote_reason": result.reason,
                    "voted": result.answer.output if result.answer is not None else None,
                    "answer_tokens": sum(len(r.token_probs) if r.token_probs else len(r.text) / 4 for r in replies)}
        return out

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
    parser.add_argument("--votes", type=int, default=1, help="answers per input to vote over (>= 3 to vote)")
    parser.add_argument("--vote-temperature", type=float, default=None)
    args = parser.parse_args()
    config = generate_config(load_recipe(args.recipe))
    rows = [json.loads(line) for line in (Path(args.source) / "data" / "samples.jsonl").read_text().splitlines()]
    rows = rows[:args.limit] if args.limit else rows
    started = time.time()
    out = asyncio.run(probe(config, rows, args.votes, args.vote_temperature))
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
    if args.votes > 1:
        _print_votes(out, args.votes, seconds)


def _same(a: str, b: str | None) -> bool:
    try:
        return json.loads(a) == json.loads(b)
    except (TypeError, ValueError):
        return a == b


def _print_votes(out: list[dict], votes: int, seconds: float) -> None:
    rejected = [r for r in out if r["vote_reason"]]
    changed = [r for r in out if not r["vote_reason"] and not _same(r["label"], r["voted"])]
    confident = {id(r) for r in out if r["least_p"] is not None and r["least_p"] < 0.5}
    print(f"\nvote of {votes}: {len(rejected)} of {len(out)} labels rejected (no majority), {len(changed)} changed; "
          f"{sum(id(r) in confident for r in rejected + changed)} of those also under p 0.5; all answers "
          f"({votes + 1} per input) took {seconds:.0f}s, about {sum(r['answer_tokens'] for r in out) / len(out):.0f} "
          f"answer tokens per input for the {votes} votes")
    for title, group in (("rejected", rejected), ("changed", changed)):
        print(f"\n{title}:")
        for r in group:
            why = f" ({r['vote_reason']})" if r["vote_reason"] else f" -> voted {r['voted']}"
            print(f"  {r['input']} -> kept {r['label']}{why}")
            for answer in r["answers"]:
                print(f"      {answer}")


if __name__ == "__main__":
    main()
