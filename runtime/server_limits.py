"""What keeps the server healthy: generation slots with a bounded queue, and metrics."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, deque
from typing import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class QueueFull(Exception):
    """Every generation slot is busy and the queue is full (or waiting took too long): answer 503."""


class Slots:
    """`running` generations at once; up to `queue` more wait for a slot, for at most `timeout_s`."""

    def __init__(self, running: int, queue: int, timeout_s: float):
        self._free = asyncio.Semaphore(running)
        self.capacity = running
        self.queue, self.timeout_s = queue, timeout_s
        self.waiting = 0
        self.active = 0

    async def acquire(self) -> None:
        if self._free.locked() and self.waiting >= self.queue:
            raise QueueFull(f"the server is busy ({self.active} running, {self.waiting} queued); retry later")
        self.waiting += 1
        try:
            await asyncio.wait_for(self._free.acquire(), self.timeout_s)
        except asyncio.TimeoutError:
            raise QueueFull(f"no generation slot freed within {self.timeout_s:g}s; retry later") from None
        finally:
            self.waiting -= 1
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        self._free.release()


class Metrics:
    """Counters rendered in the Prometheus text format. `cache_stats` (the GGUF backend's, when it batches) gives
    the prompt tokens started and those taken from the shared prefix cache."""

    window_s = 60.0  # completion tokens/s is measured over the generations that finished in this window

    def __init__(self, cache_stats: Callable[[], dict[str, int]] | None = None) -> None:
        self.cache_stats = cache_stats
        self._recent: deque[tuple[float, int]] = deque()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.generation_seconds = 0.0
        self.generations = 0
        self.first_token_seconds = 0.0
        self.first_tokens = 0
        self.disconnects = 0

    def note_tokens(self, tokens: int) -> None:
        self._recent.append((time.monotonic(), tokens))

    def tokens_per_s(self) -> float:
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - self.window_s:
            self._recent.popleft()
        return sum(tokens for _, tokens in self._recent) / self.window_s

    def render(self, slots: Slots) -> str:
        lines = ["# HELP microkit_requests_total HTTP requests answered, by path and status.",
                 "# TYPE microkit_requests_total counter"]
        for (path, status), count in sorted(self.requests.items()):
            lines.append(f'microkit_requests_total{{path={json.dumps(path)},status="{status}"}} {count}')
        rows = [
            ("prompt_tokens_total", "counter", self.prompt_tokens, "Prompt tokens processed."),
            ("completion_tokens_total", "counter", self.completion_tokens, "Tokens generated."),
            ("generation_seconds_sum", "counter", round(self.generation_seconds, 6), "Time spent generating."),
            ("generation_seconds_count", "counter", self.generations, "Generations finished."),
            ("first_token_seconds_sum", "counter", round(self.first_token_seconds, 6), "Time to first token (from slot)."),
            ("first_token_seconds_count", "counter", self.first_tokens, "Generations that produced a token."),
            ("stream_disconnects_total", "counter", self.disconnects, "Streams the client left before the end."),
            ("requests_running", "gauge", slots.active, "Generations running now."),
            ("requests_queued", "gauge", slots.waiting, "Requests waiting for a generation slot."),
            ("slots", "gauge", slots.capacity, "Generation slots (requests decoded together)."),
            ("slot_occupancy", "gauge", round(slots.active / slots.capacity, 4), "Share of the slots generating now."),
            ("completion_tokens_per_second", "gauge", round(self.tokens_per_s(), 3),
             f"Tokens generated per second, all slots, over the last {self.window_s:g} s."),
        ]
        if self.cache_stats is not None:
            cache = self.cache_stats()
            rows += [
                ("prefix_cache_prompt_tokens_total", "counter", cache["prompt_tokens"], "Prompt tokens of started requests."),
                ("prefix_cache_reused_tokens_total", "counter", cache["reused_tokens"],
                 "Prompt tokens taken from the shared prefix cache instead of being read."),
                ("prefix_cache_hit_ratio", "gauge", round(cache["reused_tokens"] / max(1, cache["prompt_tokens"]), 4),
                 "Reused share of all prompt tokens."),
            ]
        for name, kind, value, help_text in rows:
            lines += [f"# HELP microkit_{name} {help_text}", f"# TYPE microkit_{name} {kind}", f"microkit_{name} {value}"]
        return "\n".join(lines) + "\n"


class CountResponses:
    """ASGI middleware counting every response by path (known routes only) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics, known_paths: set[str]):
        self.app, self.metrics, self.known_paths = app, metrics, known_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in self.known_paths else "other"

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests[(path, message["status"])] += 1
            await send(message)

        await self.app(scope, receive, send_counted)
