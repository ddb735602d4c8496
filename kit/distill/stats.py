"""Figures of the generate stage: the live progress bar and stats.json (counted from the store's files,
so they stay right across resumed runs)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kit.core.progress import LogLines, interactive
from kit.distill.critic import Critic
from kit.distill.sample_store import SampleStore


def step_names(critic: Critic) -> list[str]:
    """The order every candidate passes through: reply parsing, the checks of the input alone, voting, the
    answer-in-input check, the recipe's other verifiers, the id check."""
    first = [v.label for v in critic.verifiers if v.input_only]
    rest = [v.label for v in critic.verifiers if not v.input_only]
    return ["parse", *first, "self_consistency", "input", *rest, "duplicate"]


def build_stats(config, store: SampleStore, steps: list[str], clients: list, elapsed: float, accepted_now: int,
                failed: int, notes: list[str]) -> dict[str, Any]:
    rejected = store.rejected.rows
    cut = Counter(row["verifier"] for row in rejected)
    attempts = store.accepted + len(rejected)
    reached, step_rows = attempts, []
    for name in steps:
        step_rows.append({"step": name, "in": reached, "kept": reached - cut[name], "cut": cut[name]})
        reached -= cut[name]
    reasons: dict[str, Counter] = {}
    for row in rejected:
        reasons.setdefault(row["verifier"], Counter())[_reason_kind(row["reason"])] += 1
    usage = _usage(clients)
    return {
        "target_samples": config.data.target_samples,
        "accepted": store.accepted,
        "rejected": len(rejected),
        "attempts": attempts,
        "acceptance_rate": round(store.accepted / attempts, 4) if attempts else 0.0,
        "target_reached": store.accepted >= config.data.target_samples,
        "steps": step_rows,
        "rejects_by_reason": {k: dict(v.most_common(10)) for k, v in reasons.items()},
        "teacher": usage,
        "tokens": {"prompt": usage["prompt_tokens"], "completion": usage["completion_tokens"],
                   "from_cache_prompt": usage["cached_prompt_tokens"],
                   "from_cache_completion": usage["cached_completion_tokens"]},
        "this_run": {"accepted": accepted_now, "elapsed_s": round(elapsed, 2), "teacher_failures": failed},
        "elapsed_s": round(elapsed, 2),
        "samples_per_s": round(accepted_now / elapsed, 4) if elapsed > 0 else 0.0,
        "notes": notes,
    }


def _reason_kind(reason: str) -> str:
    """Group reasons by their head (e.g. 'time_limit', 'score 3 < 7') so the table stays short."""
    head = reason.split(":")[0].split("(")[0].strip()
    return head[:60]


def _usage(clients: list) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for client in {id(c): c for c in clients}.values():
        for key, value in asdict(client.usage).items():
            if isinstance(value, dict):
                merged = total.setdefault(key, {})
                for k, v in value.items():
                    merged[k] = merged.get(k, 0) + v
            else:
                total[key] = total.get(key, 0) + value
    endpoints: dict[str, dict[str, int]] = {}
    for client in {id(c): c for c in clients}.values():
        backend = getattr(client, "backend", None)
        figures = backend.endpoint_figures() if hasattr(backend, "endpoint_figures") else None
        for url, counts in (figures or {}).items():
            mine = endpoints.setdefault(url, {})
            for k, v in counts.items():
                mine[k] = mine.get(k, 0) + v
    if endpoints:
        total["endpoints"] = endpoints  # requests answered and failed per endpoint of a teacher with several
    caches = {id(c.cache): c.cache for c in clients if getattr(c, "cache", None) is not None}
    # over every run into this folder: answers paid for a request the cache already answered (a kill -9 between
    # a reply and its commit, or two identical requests in flight together)
    total["repeated_requests"] = sum(cache.repeated() for cache in caches.values())
    return total


class GenerationProgress:
    """A rich bar: accepted/target, the rate, and rejections by verifier; off a terminal, the same figures as
    one log line every few seconds (kit.core.progress)."""

    def __init__(self, target: int, enabled: bool):
        console = Console(stderr=True)
        self.enabled = enabled
        self.target = target
        self.started = time.monotonic()
        self.start_count: int | None = None
        self._lines = LogLines() if enabled and not interactive(console.file) else None
        self._console = console
        self._last_line = ""
        self._progress = Progress(TextColumn("[bold]generate"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                  TextColumn("{task.fields[rejects]}"), console=console,
                                  disable=not enabled or self._lines is not None, transient=False)
        self._task = self._progress.add_task("generate", total=target, rate="", rejects="")

    def __enter__(self) -> "GenerationProgress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)
        if self._lines is not None and self._last_line:
            self._console.print(self._last_line, highlight=False, soft_wrap=True)

    def update(self, store: SampleStore) -> None:
        if self.start_count is None:
            self.start_count = store.accepted
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = (store.accepted - self.start_count) / elapsed
        cut = Counter(row["verifier"] for row in store.rejected.rows)
        rejects = " ".join(f"{name}:{count}" for name, count in cut.most_common(4))
        self._progress.update(self._task, completed=store.accepted, rate=f"{rate:.2f}/s",
                              rejects=f"cut {rejects}" if rejects else "")
        if self._lines is not None:
            self._last_line = (f"generate {store.accepted}/{self.target} kept, {rate * 60:.1f}/min, "
                               f"{elapsed:.0f}s" + (f", cut {rejects}" if rejects else ""))
            if self._lines.due():
                self._console.print(self._last_line, highlight=False, soft_wrap=True)
                self._last_line = ""
