"""Train tokens/s: microkit's trainer (its batching variants) vs a plain trl SFTTrainer with default settings.

    .venv/bin/python bench/train_throughput.py [--prompt short|schema] [--variants baseline,packed,padded,shared]
                                               [--model smollm2-135m-instruct] [--steps 6] [--rounds 2] [--threads N]

Each variant trains in its own subprocess (so each peak RSS is its own) with the same LoRA settings, batch size,
learning rate and steps on the same synthetic chat dataset. `--prompt short` gives every row a one-line system
prompt (rows of about 60 tokens); `--prompt schema` a 200-token database schema, as a text-to-SQL recipe has
(rows of about 250 tokens, most of them the same in every row). Tokens/s counts the real (non-padding) tokens
of the rows over the time spent in optimizer steps, after the first step.

  baseline  `SFTTrainer(model, args=SFTConfig(...defaults...), train_dataset=<messages>, peft_config=<same LoRA>)`:
            padded batches, no packing, trl's defaults (gradient checkpointing on, bf16 autocast where supported)
  packed    microkit, train.packing on, train.shared_prefix off: a batch is one padding-free row
  padded    microkit, both off: right-padded batches, the LM head on answer positions only
  shared    microkit defaults (train.shared_prefix on): the prompt every row shares runs once per batch
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SYSTEM = "Map the user's request to one JSON tool call with the tool name and its arguments."
SCHEMA_SYSTEM = """You write one SQLite SELECT query that answers the user's question about this database. Reply with the SQL only.
categories(id, name)
customers(id, name, email, city, country, signup_date TEXT YYYY-MM-DD)
products(id, name, category_id -> categories.id, price, stock)
orders(id, customer_id -> customers.id, order_date TEXT YYYY-MM-DD, status: pending|shipped|delivered|cancelled)
order_items(order_id -> orders.id, product_id -> products.id, quantity, unit_price)
reviews(id, product_id -> products.id, customer_id -> customers.id, rating 1-5, review_date TEXT YYYY-MM-DD)
suppliers(id, name, country, rating 1-5)
shipments(id, order_id -> orders.id, supplier_id -> suppliers.id, shipped_date TEXT YYYY-MM-DD, carrier)"""
VARIANTS = {"packed": {"packing": True, "shared_prefix": False}, "padded": {"packing": False, "shared_prefix": False},
            "shared": {}}
CITIES = ["paris", "london", "tokyo", "rome", "berlin", "madrid", "oslo", "cairo", "lima", "delhi"]
CONTACTS = ["mom", "dad", "alice", "bob", "sam", "max", "the office", "dr. lee"]


def synthetic_rows(count: int, seed: int = 0, system: str = SYSTEM) -> list[dict]:
    """Requests of varied length mapped to JSON tool calls, in the distill stage's row format."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        kind = rng.randrange(3)
        if kind == 0:
            minutes = rng.randint(1, 90)
            request = rng.choice(["set a timer for {m} minutes", "please start a {m} minute timer for the pasta, thanks",
                                  "timer {m} min"]).format(m=minutes)
            answer = {"tool": "timer", "minutes": minutes}
        elif kind == 1:
            city, day = rng.choice(CITIES), rng.choice(["today", "tomorrow"])
            request = rng.choice(["weather in {c} {d}", "what will the weather be like in {c} {d}? I need to pack",
                                  "{c} forecast {d}"]).format(c=city, d=day)
            answer = {"tool": "weather", "city": city, "day": day}
        else:
            contact = rng.choice(CONTACTS)
            text = " ".join(rng.choice(["running", "late", "see", "you", "soon", "call", "me", "back", "at", "noon"])
                            for _ in range(rng.randint(1, 12)))
            request = f"send a message to {contact}: {text}"
            answer = {"tool": "message", "contact": contact, "text": text}
        output = json.dumps(answer)
        rows.append({"id": f"row-{i}", "input": request, "output": output, "reasoning": "",
                     "messages": [{"role": "system", "content": system}, {"role": "user", "content": request},
                                  {"role": "assistant", "content": output}]})
    return rows


def save_dataset(rows: list[dict], path: Path, validation: int = 32) -> Path:
    from datasets import Dataset, DatasetDict

    DatasetDict(train=Dataset.from_list(rows[validation:]),
                validation=Dataset.from_list(rows[:validation])).save_to_disk(str(path))
    return path


def measure_ours(model: str, dataset: Path, steps: int, batch_size: int, workdir: Path, threads: int | None,
                 variant: str = "shared") -> dict:
    from accelerate import PartialState

    from kit.core.dataset import load_dataset_dict
    from kit.models.base_model import resolve_base
    from trainers.config import TrainConfig
    from trainers.model import resolve_device, set_cpu_threads
    from trainers.sft import TrainPaths, build_trainer

    config = TrainConfig(max_steps=steps, batch_size=batch_size, checkpoint_every=10 * steps, early_stopping_patience=0,
                         threads=threads, **VARIANTS[variant])
    device = resolve_device(config)
    if device == "cpu":
        set_cpu_threads(PartialState().num_processes, threads)
    trainer, progress = build_trainer(config, resolve_base(model), None, load_dataset_dict(dataset),
                                      TrainPaths(workdir), device, show_progress=False)
    trainer.train()
    return steady_state(progress)


def steady_state(progress) -> dict:
    """Tokens/s over the optimizer steps after the first (which also pays one-time allocation and setup)."""
    steps = progress.steps[1:] or progress.steps
    tokens, seconds = sum(t for t, _ in steps), sum(s for _, s in steps)
    return {"tokens_per_s": tokens / seconds, "tokens": tokens, "seconds": seconds}


def measure_baseline(model: str, dataset: Path, steps: int, batch_size: int, workdir: Path, threads: int | None) -> dict:
    import torch
    from accelerate import PartialState
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from kit.models.base_model import resolve_base
    from trainers.callbacks import TrainProgress
    from trainers.config import LoraSettings
    from trainers.model import lora_config, set_cpu_threads

    if not torch.cuda.is_available():
        set_cpu_threads(PartialState().num_processes, threads)
    path = resolve_base(model).hf_path
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = load_from_disk(str(dataset))["train"].select_columns(["messages"])
    progress = TrainProgress(show=False)
    args = SFTConfig(output_dir=str(workdir), max_steps=steps, per_device_train_batch_size=batch_size,
                     learning_rate=2e-4, save_strategy="no", report_to="none", disable_tqdm=True,
                     include_num_input_tokens_seen="non_padding", use_cpu=not torch.cuda.is_available())
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=args, train_dataset=data,
                         processing_class=tokenizer, peft_config=lora_config(LoraSettings()), callbacks=[progress])
    trainer.train()
    return steady_state(progress) | {"gradient_checkpointing": args.gradient_checkpointing, "bf16": args.bf16}


def _side(args) -> None:
    from runtime.memory import peak_rss_mb

    with tempfile.TemporaryDirectory() as workdir:
        if args.side == "baseline":
            result = measure_baseline(args.model, Path(args.dataset), args.steps, args.batch_size, Path(workdir),
                                      args.threads)
        else:
            result = measure_ours(args.model, Path(args.dataset), args.steps, args.batch_size, Path(workdir),
                                  args.threads, variant=args.side)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print("RESULT " + json.dumps(result))


LABELS = {"baseline": "trl SFTTrainer defaults", "packed": "microkit, one packed row",
          "padded": "microkit, padded batches", "shared": "microkit, shared prefix"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompt", choices=["short", "schema"], default="short",
                        help="a one-line system prompt, or a 200-token database schema in every row")
    parser.add_argument("--variants", default="baseline,packed,padded,shared",
                        help="comma-separated: baseline, packed, padded, shared")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, help="CPU threads for every variant (default: usable cores)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per variant; the best counts")
    parser.add_argument("--side", choices=sorted(LABELS), help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return _side(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in LABELS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}: use {', '.join(LABELS)}")
    system = SCHEMA_SYSTEM if args.prompt == "schema" else SYSTEM
    with tempfile.TemporaryDirectory() as tmp:
        dataset = save_dataset(synthetic_rows(args.rows, system=system), Path(tmp) / "dataset")
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for _ in range(args.rounds):  # alternate the variants so a busy machine slows all alike
            for variant in variants:
                runs[variant].append(_run_side(variant, dataset, args))
    best = {v: max(results, key=lambda r: r["tokens_per_s"]) for v, results in runs.items()}
    print(f"model {args.model}, prompt {args.prompt}, {args.steps} steps x batch {args.batch_size}, {args.rows} rows, "
          f"threads {args.threads or 'default'}, best of {args.rounds} round(s) per variant")
    print(f"  {'variant':28s} {'tokens/s':>9s}  {'vs first':>8s}  {'peak RSS':>8s}")
    first = best[variants[0]]["tokens_per_s"]
    for variant in variants:
        r = best[variant]
        every = ", ".join(f"{x['tokens_per_s']:.1f}" for x in runs[variant])
        print(f"  {LABELS[variant]:28s} {r['tokens_per_s']:9.1f}  {r['tokens_per_s'] / first:7.2f}x  "
              f"{max(x['peak_rss_mb'] for x in runs[variant]):6.0f} MB  ({r['tokens']} tokens in {r['seconds']:.1f} s; "
              f"rounds: {every})")
    if "baseline" in best:
        base = best["baseline"]
        print(f"  baseline settings: gradient_checkpointing={base['gradient_checkpointing']}, bf16={base['bf16']}")


def _run_side(side: str, dataset: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--dataset", str(dataset), "--model", args.model,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{side} failed:\n{done.stderr[-4000:]}")
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])


if __name__ == "__main__":
    main()
