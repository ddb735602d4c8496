"""The distillation stage: a teacher writes inputs and answers, the critic keeps what passes, the store
keeps everything (append-only, resumable) and the kept samples become an HF dataset."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

from kit.core.dataset import DERIVED_VALUES, no_derived_values
from kit.core.errors import UserError
from kit.core.files import atomic_write_json, atomic_write_text, fingerprint
from kit.core.run_dir import RunDir
from kit.core.stage import StageManifest, StagePlan, config_dict, run_stage, write_stage_manifest
from kit.distill import derived_values, named_choices, stop_words
from kit.distill.augment import value_swaps
from kit.distill.config import GenerateConfig
from kit.distill.critic import Candidate, Critic, Rejection
from kit.distill.critic.base import Answer, input_text
from kit.distill.items import ItemMaker, TargetReached, task_critic, wants_token_probs
from kit.distill.prompts import ParseError, answer_from_value
from kit.distill.sample_store import SAMPLES, STATS, SampleStore, probe_ids, read_jsonl, sample_id, split_ids, write_dataset
from kit.distill.stats import GenerationProgress, build_stats, step_names
from kit.distill.teachers import TeacherClient, TeacherRequestFailed, make_teacher

STAGE = "generate"
CACHE_FILE = "teacher_cache.sqlite"
CONFIG_FILE = "generate_config.json"
PROBES = "probes.jsonl"  # a round's held-out probe pool (teacher-labelled samples the next round probes with)
LIKE_ORIGIN = "like failed probe"
VERIFIER_FILES = ("database", "tests_file")  # verifier settings that name a file
# Settings that change what is generated; others (target size, concurrency, timeouts) may change on a re-run.
RUNTIME_ONLY = {"teacher": {"concurrency", "timeout_s", "max_retries", "n_threads", "base_url", "api_key_env",
                            "response_format"},
                "data": {"target_samples", "batch_size", "validation_fraction", "train_on_seeds", "value_swaps",
                         "derived_values"},
                "critic": {"max_attempts_factor"}}


class GenerateStage:
    """The generate stage under the one stage contract (kit.core.stage): writes run_dir.data."""

    name = STAGE

    def folder(self, run_dir: RunDir) -> Path:
        return run_dir.data

    def plan(self, config: GenerateConfig, run_dir: RunDir) -> StagePlan:
        return StagePlan(_without_engine(config_dict(config)), _input_hashes(config))

    def make(self, config: GenerateConfig, run_dir: RunDir, plan: StagePlan, show_progress: bool = False) -> StageManifest:
        return asyncio.run(_run(config, run_dir, plan, show_progress))


GENERATE = GenerateStage()


def run(config: GenerateConfig, run_dir: RunDir, *, show_progress: bool = False, force: bool = False) -> StageManifest:
    """Generate until `data.target_samples` samples passed the critic (or the attempt budget is spent); skipped
    when the data folder already holds what this config makes."""
    return run_stage(GENERATE, config, run_dir, force=force, show_progress=show_progress)


async def _run(config: GenerateConfig, run_dir: RunDir, plan: StagePlan, show_progress: bool) -> StageManifest:
    folder = run_dir.data
    folder.mkdir(parents=True, exist_ok=True)
    _check_same_recipe(config, folder)
    started = time.time()
    store = SampleStore(folder)
    teacher: TeacherClient | None = None
    judges: list[TeacherClient] = []
    workers = None  # Ray worker actors (config.ray), which then hold every teacher client
    if config.ray:
        from kit.distill import distributed

        distributed.connect(config.ray)
        workers = distributed.RayWorkers(config, folder / CACHE_FILE, failed_inputs(config.round.failures_file),
                                         config.ray_workers)
    else:
        teacher = make_teacher(config.teacher, folder / CACHE_FILE, token_probs=wants_token_probs(config))
    try:
        if workers is not None:
            await workers.check()
            critic, _ = task_critic(config, None, None)  # it remembers and rechecks; the workers review
        else:
            await teacher.backend.check()
            critic, judges = task_critic(config, teacher, lambda judge: make_teacher(judge, folder / CACHE_FILE))
            for judge in judges:
                await judge.backend.check()
        generation = Generation(config, store, teacher, critic)
        accepted_before = store.accepted
        with GenerationProgress(config.data.target_samples, show_progress) as progress:
            generation.progress = progress
            progress.update(store)
            if workers is not None:
                await distributed.fill_on_workers(generation, workers)
            else:
                await generation.fill()
        clients: list = [teacher, *judges]
        if teacher is not None:
            generation.maker.notes += teacher.backend.notes()
        if workers is not None:
            generation.maker.notes += await workers.actors[0].notes.remote()
            clients = [distributed.WorkersUsage(usage, workers.cache_view) for usage in await workers.usages()]
        elapsed = time.time() - started
        seeds, seed_notes = await seed_rows(config, critic) if config.data.train_on_seeds else ([], [])
        stats = build_stats(config, store, step_names(critic), clients, elapsed,
                            store.accepted - accepted_before, generation.failed,
                            generation.maker.notes + critic.notes + seed_notes)
        stats["wordings"] = generation.maker.wordings
        stats["seeds_in_training"] = len(seeds)
        stats["decontamination"] = [v.rule for v in critic.verifiers if v.type == "decontaminate" and v.items]
        held_out = _write_probes(config, store.samples.rows, folder)
        stats["round"] = _round_stats(config, store.samples.rows, generation, held_out)
        samples = generation.earlier_rows + store.samples.rows
        swaps, stats["value_swaps"] = await swap_rows(config, critic, samples, seeds, held_out)
        seed_answers = [{"id": f"seed-{n}", "input": seed.input, "output": seed.output if isinstance(seed.output, str)
                         else json.dumps(seed.output)} for n, seed in enumerate(config.seeds, 1)]
        learns_rules = config.data.derived_values and config.output.format == "json"
        learned = derived_values.learn(samples, seed_answers) if learns_rules else no_derived_values()
        learned["no_repeat_fields"] = _optional_fields(config, learned["no_repeat_fields"], samples)
        schema = config.output.resolved_schema() if learns_rules else None  # read once: it may be a file
        if learns_rules:  # "timer" is never a label on its own; "tomorrow" is the day of a request naming it alone
            learned["copy_stop_words"] = stop_words.learn(samples + seed_answers, config.critic.copied_fields, schema)
            learned["named_choices"] = named_choices.learn(samples + seed_answers, schema)
        # a derived value no rule explains, or another choice than the one the request names, is a teacher's slip
        # the other samples contradict: not trained on
        slips = derived_values.inconsistent(samples, learned)  # none when no rule was learned
        for sample_id, why in named_choices.slips(samples, learned.get("named_choices") or {}, schema).items():
            slips.setdefault(sample_id, why)
        # a member repeating the words a derived value came from ("5 minutes" as a timer's label) is dropped
        repaired = derived_values.repeated_spans(samples, learned)
        stats["derived_values"] = learned | {"left_out": len(slips), "left_out_examples": [
            {"id": i, "reason": why} for i, why in list(slips.items())[:20]], "repaired": len(repaired),
            "repaired_examples": [{"id": i, "reason": why} for i, (_, why) in list(repaired.items())[:20]]}
        atomic_write_json(folder / STATS, stats)
        trained = [s | {"output": repaired[s["id"]][0]} if s["id"] in repaired else s
                   for s in samples if s["id"] not in slips]  # the sample store keeps the teacher's answers
        split = write_dataset(trained, run_dir.dataset,
                              system_prompt=config.task.effective_system_prompt,
                              validation_fraction=config.data.validation_fraction, seed=config.data.seed,
                              extra_train=seeds + swaps, held_out=held_out,
                              answer=lambda text, output: derived_values.student_answer(text, output, learned),
                              extra_files={DERIVED_VALUES: json.dumps(learned, indent=2) + "\n"})
    finally:
        for client in {id(c): c for c in [teacher, *judges] if c is not None}.values():
            await client.aclose()
        if workers is not None:
            workers.close()
        store.close()
    outputs = {"samples": "samples.jsonl", "rejected": "rejected.jsonl", "stats": STATS, "dataset": "dataset",
               "derived_values": f"dataset/{DERIVED_VALUES}"}
    if config.round.holds_out_probes:
        outputs["probes"] = PROBES
    manifest = plan.manifest(STAGE, outputs=outputs,
                             figures={"accepted": stats["accepted"], "acceptance_rate": stats["acceptance_rate"],
                                      "target_reached": stats["target_reached"], "split": split,
                                      "samples_per_s": stats["samples_per_s"], "round": stats["round"]},
                             started=started)
    write_stage_manifest(folder, manifest)
    return manifest


class Generation:
    """Workers take plan indices in order, skipping those a previous run finished; each index ends as
    one accepted sample or one rejection, written before the next is counted. Results are written in plan
    order (one that finishes early waits for the indices before it), so the critic's memory, and with it which
    of two near-duplicates is kept, never depends on which teacher reply came back first: the same teacher
    replies give the same samples, however the requests interleave and wherever a run was killed."""

    def __init__(self, config: GenerateConfig, store: SampleStore, teacher: TeacherClient, critic: Critic):
        self.config = config
        self.store = store
        self.teacher = teacher
        self.critic = critic
        self.progress: GenerationProgress | None = None
        self.target = config.data.target_samples
        self.budget = math.ceil(self.target * config.critic.max_attempts_factor)
        self.failed = 0
        self._consecutive_failures = 0
        self._in_flight = 0
        self._next = 0
        self._finished: dict[int, tuple | None] = {}  # results waiting for an earlier index (None: its request failed)
        self._write_from = 0  # the first index not written yet
        self.earlier_rows = [row for folder in config.round.earlier for row in read_jsonl(Path(folder) / SAMPLES)]
        self.earlier_ids = {row["id"] for row in self.earlier_rows}
        self.maker = ItemMaker(config, teacher, critic, failed_inputs(config.round.failures_file),
                               target_reached=lambda: self.store.accepted >= self.target)
        for row in self.earlier_rows + store.samples.rows:  # dedup and friends remember what was kept before
            critic.admit(row["id"], Candidate(row["index"], row["input"], [Answer(None, row["output"])]))

    async def fill(self) -> None:
        # Enough workers to keep every teacher slot busy: `inputs_per_request` workers wait on one shared input
        # list, so `concurrency + 1` workers kept only about 2 of 8 slots decoding (lists are written one
        # token at a time while their answers wait); the teacher client's semaphore still bounds requests.
        await self.maker.ask_wordings()
        workers = self.config.teacher.concurrency * self.config.data.inputs_per_request + 1
        tasks = [asyncio.create_task(self._worker()) for _ in range(workers)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            self.maker.cancel()
            self.write_what_came_back()

    def write_what_came_back(self) -> None:
        """When the stage stops early (an unreachable teacher, an interrupt), results already back for indices past
        one still open are written too, in plan order: the work paid for is kept, and a rerun takes the open
        indices again. (After a normal end nothing is left, or only late finishers past the target.)"""
        for index in sorted(self._finished):
            result = self._finished.pop(index)
            if result is not None:
                self._record(index, *result)

    def _attempts(self) -> int:
        return len(self.store.done) + self._in_flight + len(self._finished) + self.failed

    def _take_index(self) -> int:
        while self._next in self.store.done:
            self._next += 1
        self._next += 1
        return self._next - 1

    async def _worker(self) -> None:
        while self.store.accepted < self.target and self._attempts() < self.budget:
            index = self._take_index()
            self._in_flight += 1
            try:
                candidate, rejection = await self.maker.make(index)
            except TargetReached:
                return
            except TeacherRequestFailed as err:
                self.settle(index, err)
                continue
            self.settle(index, (candidate, rejection))

    def settle(self, index: int, outcome: tuple | TeacherRequestFailed) -> None:
        """An index taken is back (made here or by a Ray worker): its (candidate, rejection), written in plan
        order, or the teacher failure that passes it over (counted; too many in a row stop the stage)."""
        self._in_flight -= 1
        if isinstance(outcome, TeacherRequestFailed):
            self._finish(index, None)
            self._on_failure(outcome)
        else:
            self._consecutive_failures = 0
            self._finish(index, outcome)

    def _finish(self, index: int, result: tuple | None) -> None:
        """Write every finished result whose earlier indices are all written, in plan order (without awaiting).
        An index whose request failed is passed over (a rerun takes it again)."""
        self._finished[index] = result
        while True:
            while self._write_from in self.store.done:
                self._write_from += 1
            if self._write_from not in self._finished:
                return
            result = self._finished.pop(self._write_from)
            if result is not None:
                self._record(self._write_from, *result)
            self._write_from += 1

    def _on_failure(self, err: TeacherRequestFailed) -> None:
        self.failed += 1
        self._consecutive_failures += 1
        if self._consecutive_failures > 3 * (self.config.teacher.concurrency + 1):
            raise UserError(f"the teacher keeps failing ({err}); check it, then run again: finished samples are kept")

    def _record(self, index: int, candidate: Candidate | dict[str, Any], rejection: Rejection | None) -> None:
        """Runs without awaiting: the re-check, the id check and the write happen as one step."""
        if self.store.accepted >= self.target:
            return  # a late finisher; its requests stay cached for a later, larger run
        written_input = candidate.get("input") if isinstance(candidate, dict) else candidate.input
        if written_input is not None:  # the input checks come first, whatever else objected (or was not asked)
            rejection = self.critic.recheck_input(Candidate(index, written_input, []), rejection)
        if isinstance(candidate, Candidate) and (rejection is None or rejection.verifier in self.critic.stateful_labels):
            # against everything written before this index: a near-duplicate found at review time names the
            # same first objection it would have met had every earlier index been written by then
            rejection = self.critic.recheck(candidate) or rejection
        if rejection is None and isinstance(candidate, Candidate):
            sid = sample_id(candidate.input_text, candidate.answer.output)
            if sid in self.store.ids or sid in self.earlier_ids:
                rejection = Rejection("duplicate", f"same input and output as sample {sid}")
        if rejection is not None:
            self.store.add_rejection(_rejection_row(index, candidate, rejection))
        else:
            self.store.add_sample({"id": sid, "index": index, "input": candidate.input,
                                   "output": candidate.answer.output, "reasoning": candidate.answer.reasoning,
                                   "origin": candidate.origin, "votes": candidate.votes,
                                   "answers": len(candidate.answers)} | _least_p(candidate.answer))
            self.critic.admit(sid, candidate)
        if self.progress is not None:
            self.progress.update(self.store)


def failed_inputs(path: Path | None) -> list[str]:
    """The inputs of the previous round's failed probes, in the order the probe wrote them."""
    if path is None:
        return []
    return [input_text(row["input"]) for row in read_jsonl(Path(path))]


def _write_probes(config: GenerateConfig, rows: list[dict[str, Any]], folder: Path) -> set[str]:
    """A round before the last holds out its probe pool (a band of shares, disjoint from validation) and writes
    it to probes.jsonl; returns the held-out ids."""
    if not config.round.holds_out_probes:
        return set()
    ids = [row["id"] for row in rows]
    held = probe_ids(ids, config.data.validation_fraction, config.data.probe_fraction, config.data.seed) - \
        split_ids(ids, config.data.validation_fraction, config.data.seed)
    probes = [{"id": r["id"], "input": r["input"], "output": r["output"]} for r in rows if r["id"] in held]
    atomic_write_text(folder / PROBES, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in probes))
    return held


def _round_stats(config: GenerateConfig, rows: list[dict[str, Any]], generation: "Generation",
                 held_out: set[str]) -> dict[str, Any]:
    """What this round probed, found failed and added (read from the previous round's probe summary)."""
    stats: dict[str, Any] = {"number": config.round.number, "of": config.round.of,
                             "earlier_samples": len(generation.earlier_rows), "probes_held_out": len(held_out),
                             "inputs_like_failures": sum(r["origin"].startswith(LIKE_ORIGIN) for r in rows)}
    failures_file = config.round.failures_file
    if failures_file is not None and (summary := Path(failures_file).with_name("probe.json")).is_file():
        probe = json.loads(summary.read_text())
        stats |= {"probed": probe.get("probed"), "failed": probe.get("failed")}
    return stats


def _optional_fields(config: GenerateConfig, keys: list[str], samples: list[dict[str, Any]]) -> list[str]:
    """The `keys` every sample's answer still follows the output schema without (a required member is never
    dropped)."""
    schema = config.output.resolved_schema()
    if not keys or schema is None:
        return keys
    from jsonschema import Draft202012Validator  # lazy: jsonschema is slow to import

    validator = Draft202012Validator(schema)
    answers = [answer for _, answer in derived_values.answered(samples)]
    return [key for key in keys if all(validator.is_valid(_without_key(a, key)) for a in answers)]


def _without_key(value: Any, key: str) -> Any:
    if isinstance(value, list):
        return [_without_key(item, key) for item in value]
    if isinstance(value, dict):
        return {k: _without_key(v, key) for k, v in value.items() if k != key}
    return value


async def seed_rows(config: GenerateConfig, critic: Critic) -> tuple[list[dict[str, Any]], list[str]]:
    """The seeds as samples for the training split, and a note for each left out: a seed that overlaps the eval
    set (by the critic's decontaminate checks) must not leak the answers scored."""
    checks = [v for v in critic.verifiers if v.type == "decontaminate"]
    rows, notes = [], []
    for number, seed in enumerate(config.seeds, 1):
        try:
            answer = answer_from_value(config, seed.output, seed.reasoning or "")
        except ParseError as err:
            notes.append(f"seed {number} left out of training: {err}")
            continue
        candidate = Candidate(index=-number, input=seed.input, answers=[answer], origin="seed")
        if (rejection := await first_objection(checks, candidate)) is not None:
            notes.append(f"seed {number} left out of training: it {rejection.reason}")
            continue
        rows.append({"id": f"seed-{number}", "input": seed.input, "output": answer.output,
                     "reasoning": answer.reasoning})
    return rows, notes


# checks a swapped row passes: those that cost no teacher call and remember nothing (dedup would cut every swap)
SWAP_CHECKS = {"json_schema", "grounded", "decontaminate", "sql", "python"}


async def swap_rows(config: GenerateConfig, critic: Critic, samples: list[dict[str, Any]], seeds: list[dict[str, Any]],
                    held_out: set[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`data.value_swaps` new training rows per training sample (kit.distill.augment), each passed through the
    critic's free checks; and their figures for stats.json. Validation and probe samples are neither sources nor
    donors, so no validation value is trained on."""
    per_sample = config.data.value_swaps
    figures: dict[str, Any] = {"per_sample": per_sample, "made": 0, "kept": 0, "rejected": {}}
    if per_sample == 0:
        return [], figures
    if config.output.format != "json":
        figures["note"] = "value swaps apply to JSON answers only"
        return [], figures
    validation = split_ids([s["id"] for s in samples], config.data.validation_fraction, config.data.seed)
    sources = [{"id": row["id"], "input": input_text(row["input"]), "value": json.loads(row["output"])}
               for row in [*samples, *seeds] if row["id"] not in validation and row["id"] not in held_out]
    checks = [v for v in critic.verifiers if v.type in SWAP_CHECKS]
    rows, rejected = [], Counter()
    for swap in value_swaps(sources, per_sample, seed=config.data.seed):
        answer = answer_from_value(config, swap.answer)
        candidate = Candidate(index=-1, input=swap.input, answers=[answer], origin="value swap")
        rejection = await first_objection(checks, candidate)
        if rejection is not None:
            rejected[rejection.verifier] += 1
            continue
        rows.append({"id": swap.id, "input": swap.input, "output": answer.output, "reasoning": ""})
    figures |= {"made": len(rows) + sum(rejected.values()), "kept": len(rows), "rejected": dict(rejected)}
    return rows, figures


async def first_objection(checks: list, candidate: Candidate) -> Rejection | None:
    """The first of `checks` that rejects the candidate, with its reason; None when all pass."""
    for check in checks:
        if (reason := await check.check(candidate)) is not None:
            return Rejection(check.label, reason)
    return None


def _rejection_row(index: int, candidate: Candidate | dict[str, Any], rejection: Rejection) -> dict[str, Any]:
    row = {"index": index, "verifier": rejection.verifier, "reason": rejection.reason}
    if isinstance(candidate, Candidate):
        row |= {"input": candidate.input, "output": candidate.answer.output, "origin": candidate.origin}
        row |= _least_p(candidate.answer)
    else:
        row |= candidate
    return row


def _least_p(answer) -> dict[str, Any]:
    """The teacher's least token probability in the answer, for samples.jsonl and rejected.jsonl (when known)."""
    return {} if answer.least_p is None else {"least_p": round(answer.least_p, 4), "least_token": answer.least_token}


def _check_same_recipe(config: GenerateConfig, folder: Path) -> None:
    """Samples from different recipe settings must not mix; say so instead of continuing."""
    sections = _content_sections(config)
    path = folder / CONFIG_FILE
    if path.exists() and (folder / "samples.jsonl").exists():
        before = json.loads(path.read_text())
        changed = sorted(k for k in set(before) | set(sections) if before.get(k) != sections.get(k))
        if changed:
            raise UserError(f"{folder} holds samples made with other settings (changed: {', '.join(changed)}); "
                            "delete that folder, or run `kit generate` with --fresh to start over")
    atomic_write_json(path, sections)


def _content_sections(config: GenerateConfig) -> dict[str, str]:
    """A short hash per section of what decides the samples. Files (eval set, database, tests) count by their
    content, not their path, so a project moved or cloned elsewhere keeps its samples."""
    dumped = _without_engine(config_dict(config))
    dumped.pop("round", None)  # each round writes a folder of its own; its inputs are hashed by the plan
    for verifier in dumped["critic"]["verifiers"]:
        for attr in VERIFIER_FILES:
            if verifier.get(attr) is not None:
                verifier[attr] = _content_or_path(verifier[attr])
    if dumped.get("eval_file") is not None:
        dumped["eval_file"] = _content_or_path(dumped["eval_file"])
    out = {}
    for section, value in dumped.items():
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in RUNTIME_ONLY.get(section, set())}
        out[section] = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return out


def _without_engine(dumped: dict[str, Any]) -> dict[str, Any]:
    """The config without where it runs (one process or a Ray cluster): either makes the same samples."""
    return {k: v for k, v in dumped.items() if k not in ("ray", "ray_workers")}


def _content_or_path(path: str) -> str:
    return fingerprint(Path(path)) if Path(path).exists() else str(path)


def _input_hashes(config: GenerateConfig) -> dict[str, str]:
    files = {"eval_file": config.eval_file}
    for i, verifier in enumerate(config.critic.verifiers):
        for attr in VERIFIER_FILES:
            if getattr(verifier, attr, None) is not None:
                files[f"verifier{i}.{attr}"] = getattr(verifier, attr)
    files["failures"] = config.round.failures_file
    for number, folder in enumerate(config.round.earlier, 1):
        files[f"round{number}.samples"] = Path(folder) / SAMPLES
    return {name: fingerprint(path) for name, path in files.items() if path is not None and Path(path).exists()}
