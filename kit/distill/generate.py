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

from kit.core.dataset import DERIVED_VALUES
from kit.core.errors import UserError
from kit.core.files import atomic_write_json, atomic_write_text, fingerprint
from kit.core.run_dir import RunDir
from kit.core.stage import StageManifest, StagePlan, config_dict, run_stage, write_stage_manifest
from kit.distill import derived_values
from kit.distill.augment import value_swaps
from kit.distill.config import GenerateConfig
from kit.distill.critic import Candidate, Critic, Rejection, build_critic
from kit.distill.critic.base import Answer, input_text
from kit.distill.prompts import (
    ParseError,
    answer_from_value,
    answer_messages,
    answer_schema,
    input_messages,
    input_schema,
    inputs_messages,
    inputs_schema,
    parse_answer,
    parse_input,
    parse_inputs,
    parse_wordings,
    plan_item,
    request_seed,
    round_role,
    vote_key,
    wordings_messages,
    wordings_schema,
)
from kit.distill.sample_store import SAMPLES, STATS, SampleStore, probe_ids, read_jsonl, sample_id, split_ids, write_dataset
from kit.distill.stats import GenerationProgress, build_stats, step_names
from kit.distill.teachers import TeacherClient, TeacherRequestFailed, make_teacher
from kit.distill.vote import vote

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
        return StagePlan(config_dict(config), _input_hashes(config))

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
    teacher = make_teacher(config.teacher, folder / CACHE_FILE)
    judges: list[TeacherClient] = []
    try:
        await teacher.backend.check()

        def judge_client(verifier) -> TeacherClient:
            if verifier.teacher is None:
                return teacher
            judges.append(make_teacher(verifier.teacher, folder / CACHE_FILE))
            return judges[-1]

        critic = build_critic(config.critic.verifiers, schema=config.output.json_schema, eval_file=config.eval_file,
                              seed_inputs=[input_text(s.input) for s in config.seeds],
                              judge_client=judge_client, task_description=config.task.description)
        for judge in judges:
            await judge.backend.check()
        generation = Generation(config, store, teacher, critic)
        accepted_before = store.accepted
        with GenerationProgress(config.data.target_samples, show_progress) as progress:
            generation.progress = progress
            progress.update(store)
            await generation.fill()
        elapsed = time.time() - started
        seeds, seed_notes = await seed_rows(config, critic) if config.data.train_on_seeds else ([], [])
        stats = build_stats(config, store, step_names(critic), [teacher, *judges], elapsed,
                            store.accepted - accepted_before, generation.failed,
                            generation.notes + critic.notes + seed_notes)
        stats["wordings"] = generation.wordings
        stats["seeds_in_training"] = len(seeds)
        stats["decontamination"] = [v.rule for v in critic.verifiers if v.type == "decontaminate" and v.items]
        held_out = _write_probes(config, store.samples.rows, folder)
        stats["round"] = _round_stats(config, store.samples.rows, generation, held_out)
        samples = generation.earlier_rows + store.samples.rows
        swaps, stats["value_swaps"] = await swap_rows(config, critic, samples, seeds, held_out)
        learned = derived_values.learn(samples) if config.data.derived_values and config.output.format == "json" \
            else {"derived_numbers": {}, "clock_fields": []}
        stats["derived_values"] = learned
        atomic_write_json(folder / STATS, stats)
        split = write_dataset(samples, run_dir.dataset,
                              system_prompt=config.task.effective_system_prompt,
                              validation_fraction=config.data.validation_fraction, seed=config.data.seed,
                              extra_train=seeds + swaps, held_out=held_out,
                              answer=lambda text, output: derived_values.student_answer(text, output, learned),
                              extra_files={DERIVED_VALUES: json.dumps(learned, indent=2) + "\n"})
    finally:
        for client in {id(c): c for c in [teacher, *judges]}.values():
            await client.aclose()
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


class TargetReached(Exception):
    pass


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
        self.with_reference = any(v.type == "sql" and v.compare == "reference" for v in config.critic.verifiers)
        self.votes_on_results = any(v.type == "sql" and v.compare == "majority" for v in config.critic.verifiers)
        self.failed = 0
        self._consecutive_failures = 0
        self._in_flight = 0
        self._next = 0
        self._input_lists: dict[int, asyncio.Task] = {}  # list number -> the teacher's reply, shared by its items
        self._finished: dict[int, tuple | None] = {}  # results waiting for an earlier index (None: its request failed)
        self._write_from = 0  # the first index not written yet
        self.earlier_rows = [row for folder in config.round.earlier for row in read_jsonl(Path(folder) / SAMPLES)]
        self.earlier_ids = {row["id"] for row in self.earlier_rows}
        self.failures = failed_inputs(config.round.failures_file)
        self.wordings: dict[str, list[str]] = {}  # topic ("" for none) -> ways users word it (data.wordings)
        self.notes: list[str] = []
        for row in self.earlier_rows + store.samples.rows:  # dedup and friends remember what was kept before
            critic.admit(row["id"], Candidate(row["index"], row["input"], [Answer(None, row["output"])]))

    async def fill(self) -> None:
        # Enough workers to keep every teacher slot busy: `inputs_per_request` workers wait on one shared input
        # list, so `concurrency + 1` workers kept only about 2 of 8 slots decoding (lists are written one
        # token at a time while their answers wait); the teacher client's semaphore still bounds requests.
        self.wordings = await self._ask_wordings()
        workers = self.config.teacher.concurrency * self.config.data.inputs_per_request + 1
        tasks = [asyncio.create_task(self._worker()) for _ in range(workers)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in [*tasks, *self._input_lists.values()]:
                task.cancel()

    async def _ask_wordings(self) -> dict[str, list[str]]:
        """`data.wordings` ways users word each topic, one teacher request per topic (cached like every request,
        so a rerun plans the same inputs). A reply that does not parse leaves its topic without wordings."""
        config, teacher = self.config, self.teacher
        count = config.data.wordings
        if count == 0:
            return {}
        topics = config.data.topics or [""]

        async def one(number: int, topic: str) -> list[str]:
            reply = await teacher.complete(wordings_messages(config, topic or None, count), wordings_schema(count),
                                           teacher.sampling(request_seed(config.data.seed, number,
                                                                         round_role(config, "wordings")),
                                                            max_tokens=max(config.teacher.max_tokens, 32 * count)))
            try:
                return parse_wordings(reply.text)
            except ParseError as err:
                self.notes.append(f"wordings: none for topic {topic or '(all)'!r}: {err}")
                return []

        try:
            lists = await asyncio.gather(*(one(n, t) for n, t in enumerate(topics)))
        except TeacherRequestFailed as err:
            raise UserError(f"the teacher failed while listing wordings ({err}); check it, then run again") from None
        return {topic: wordings for topic, wordings in zip(topics, lists) if wordings}

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
                candidate, rejection = await self._make(index)
            except TargetReached:
                return
            except TeacherRequestFailed as err:
                self._in_flight -= 1
                self._finish(index, None)
                self._on_failure(err)
                continue
            self._in_flight -= 1
            self._consecutive_failures = 0
            self._finish(index, (candidate, rejection))

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

    async def _make(self, index: int) -> tuple[Candidate | dict[str, Any], Rejection | None]:
        config, teacher = self.config, self.teacher
        item = plan_item(config, index, self.failures, self.wordings)
        try:
            task_input, reference = await self._input(index, item)
        except ParseError as err:
            raw = getattr(err, "raw", "")
            return {"input": None, "origin": item.origin, "raw": raw[:500]}, Rejection("parse", f"input: {err}")
        self._stop_if_done()
        n = config.data.answers_per_input
        messages = answer_messages(config, item, task_input)
        answer_params = {} if config.teacher.answer_temperature is None else \
            {"temperature": config.teacher.answer_temperature}
        replies = await asyncio.gather(*(teacher.complete(messages, answer_schema(config, task_input), teacher.sampling(
            request_seed(config.data.seed, index, round_role(config, "answer"), k), **answer_params))
            for k in range(n)))
        answers, problems = [], []
        for r in replies:
            try:
                answers.append(parse_answer(config, r.text))
            except ParseError as err:
                problems.append(str(err))
        if not answers:
            return ({"input": task_input, "origin": item.origin, "raw": replies[0].text[:500]},
                    Rejection("parse", f"answer: {problems[0]}"))
        candidate = Candidate(index, task_input, answers, origin=item.origin, reference=reference)
        if n > 1 and (rejection := self._vote(candidate, n)) is not None:
            return candidate, rejection
        self._stop_if_done()
        return candidate, await self.critic.review(candidate)

    async def _input(self, index: int, item) -> tuple[Any, Any]:
        """The input written for plan item `index` (and its reference answer, when the critic compares with
        one). With `data.inputs_per_request` > 1 the teacher writes consecutive items as one list, and each
        item's worker takes its entry from the shared reply."""
        config, teacher = self.config, self.teacher
        count = config.data.inputs_per_request
        if count == 1:
            reply = await teacher.complete(input_messages(config, item, self.with_reference),
                                           input_schema(config, self.with_reference),
                                           teacher.sampling(request_seed(config.data.seed, index,
                                                                            round_role(config, "input"))))
            try:
                return parse_input(config, reply.text, self.with_reference)
            except ParseError as err:
                err.raw = reply.text
                raise
        number = index // count
        task = self._input_lists.get(number)
        if task is None:
            task = self._input_lists[number] = asyncio.ensure_future(self._input_list(number, count))
        entries = await asyncio.shield(task)
        entry = entries[index - number * count]
        if isinstance(entry, ParseError):
            raise entry
        return entry

    async def _input_list(self, number: int, count: int) -> list[tuple[Any, Any] | ParseError]:
        config, teacher = self.config, self.teacher
        first = number * count
        item = plan_item(config, first, self.failures, self.wordings)
        reply = await teacher.complete(inputs_messages(config, item, count, self.with_reference),
                                       inputs_schema(config, count, self.with_reference),
                                       teacher.sampling(request_seed(config.data.seed, first,
                                                                         round_role(config, f"inputs{count}")),
                                                        max_tokens=config.teacher.max_tokens * count))
        try:
            entries = parse_inputs(config, reply.text, count, self.with_reference)
        except ParseError as err:
            entries = [err] * count
        for entry in entries:
            if isinstance(entry, ParseError):
                entry.raw = reply.text
        return entries

    def _stop_if_done(self) -> None:
        """Before paying for another request: is the target already met? (Replies already paid for are
        cached, so a later run with a larger target uses them.)"""
        if self.store.accepted >= self.target:
            raise TargetReached

    def _vote(self, candidate: Candidate, n: int) -> Rejection | None:
        """Self-consistency (kit.distill.vote): JSON field by field, text whole; a label needs a strict majority of
        all N (unless a sql verifier votes on result sets instead)."""
        result, chosen = vote(candidate.answers, self.config.output.format, lambda a: vote_key(self.config, a))
        if result.answer is not None and chosen is None:  # a label composed of each field's majority
            candidate.label = result.answer
        candidate.chosen, candidate.votes = chosen or 0, result.votes
        if result.reason and not self.votes_on_results:
            return Rejection("self_consistency", result.reason)
        return None

    def _record(self, index: int, candidate: Candidate | dict[str, Any], rejection: Rejection | None) -> None:
        """Runs without awaiting: the re-check, the id check and the write happen as one step."""
        if self.store.accepted >= self.target:
            return  # a late finisher; its requests stay cached for a later, larger run
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
                                   "answers": len(candidate.answers)})
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
    else:
        row |= candidate
    return row


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
    dumped = config_dict(config)
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
