"""The teacher interface: one async `complete`, wrapped by a client that caches, bounds and retries."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from kit.core.errors import UserError
from kit.distill.config import TeacherConfig
from kit.distill.teachers.cache import RequestCache

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    # (token text, probability) of each generated token of a reply under a JSON schema, from a teacher asked for
    # them (`make_teacher(..., token_probs=True)`) that reports them; None otherwise
    token_probs: tuple[tuple[str, float], ...] | None = None


class TransientTeacherError(Exception):
    """Worth retrying: 429, 5xx, a timeout, a dropped connection, a malformed response."""

    def __init__(self, message: str, retry_after: float | None = None, connection: bool = False,
                 set_aside: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.connection = connection
        self.set_aside = set_aside  # the endpoint itself is in trouble: a teacher with several tries another


class TeacherRequestFailed(Exception):
    """A request still failed after every retry (the run goes on; the item is tried again on a re-run)."""


class TeacherBackend(ABC):
    """One backend: sends one chat request and returns the text and its token counts."""

    name: str = ""

    def __init__(self, config: TeacherConfig):
        self.config = config
        self.token_probs = False  # report each token's probability in replies under a JSON schema (make_teacher)

    def notes(self) -> list[str]:
        """What stats.json should say about this teacher's replies (e.g. how its token probabilities were taken)."""
        return []

    @property
    def where(self) -> str:
        """What to name in an error message: the endpoint or the model."""
        return self.config.model

    async def check(self) -> None:
        """Raise UserError when the teacher cannot be reached or loaded."""

    @abstractmethod
    async def complete(self, messages: Messages, schema: dict[str, Any] | None, params: dict[str, Any]) -> Completion:
        ...

    async def aclose(self) -> None:
        pass


@dataclass
class TeacherUsage:
    requests: int = 0  # sent to the backend (not from the cache)
    cached: int = 0
    retries: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)


class TeacherClient:
    """Bounded concurrency, retries with exponential backoff and jitter, an on-disk cache, usage counts."""

    backoff_base_s = 0.5
    backoff_cap_s = 20.0

    def __init__(self, backend: TeacherBackend, cache: RequestCache | None):
        self.backend = backend
        self.config = backend.config
        self.cache = cache
        self.usage = TeacherUsage()
        self._slots = asyncio.Semaphore(self.config.concurrency)

    def request_body(self, messages: Messages, schema: dict[str, Any] | None, params: dict[str, Any]) -> dict[str, Any]:
        return {"backend": self.backend.name, "model": self.config.model, "messages": messages,
                "schema": schema, "params": params}

    @staticmethod
    def request_key(body: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def sampling(self, seed: int, **overrides: Any) -> dict[str, Any]:
        params = {"temperature": self.config.temperature, "top_p": self.config.top_p,
                  "max_tokens": self.config.max_tokens, "seed": seed}
        return params | overrides

    async def complete(self, messages: Messages, schema: dict[str, Any] | None, params: dict[str, Any]) -> Completion:
        if not self.config.json_mode:
            schema = None
        body = self.request_body(messages, schema, params)
        key = self.request_key(body)
        if self.cache is not None and (hit := await _maybe_await(self.cache.get(key))) is not None:
            self.usage.cached += 1
            self.usage.cached_prompt_tokens += hit.get("prompt_tokens", 0)
            self.usage.cached_completion_tokens += hit.get("completion_tokens", 0)
            probs = hit.get("token_probs")
            return Completion(hit["text"], hit.get("prompt_tokens", 0), hit.get("completion_tokens", 0), cached=True,
                              token_probs=tuple((piece, p) for piece, p in probs) if probs is not None else None)
        async with self._slots:
            result = await self._with_retries(messages, schema, params)
        self.usage.requests += 1
        self.usage.prompt_tokens += result.prompt_tokens
        self.usage.completion_tokens += result.completion_tokens
        if self.cache is not None:  # a local cache, or one a remote worker reaches through Ray (awaitable)
            entry = {"text": result.text, "prompt_tokens": result.prompt_tokens,
                     "completion_tokens": result.completion_tokens}
            if result.token_probs is not None:
                entry["token_probs"] = [list(pair) for pair in result.token_probs]
            await _maybe_await(self.cache.put(key, entry, request=body))
        return result

    async def _with_retries(self, messages: Messages, schema: dict[str, Any] | None, params: dict[str, Any]) -> Completion:
        attempt = 0
        while True:
            try:
                return await self.backend.complete(messages, schema, params)
            except TransientTeacherError as err:
                if attempt >= self.config.max_retries:
                    self.usage.failed += 1
                    if err.connection:
                        raise unreachable(self.backend.where, err) from None
                    raise TeacherRequestFailed(f"{self.backend.where}: {err} (after {attempt} retries)") from None
                attempt += 1
                self.usage.retries += 1
                reason = str(err).split(":")[0]
                self.usage.retry_reasons[reason] = self.usage.retry_reasons.get(reason, 0) + 1
                await asyncio.sleep(self._delay(attempt, err.retry_after))

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2 ** (attempt - 1))
        delay = random.uniform(ceiling / 2, ceiling)  # "equal jitter": spread, never zero
        return min(self.backoff_cap_s, max(delay, retry_after or 0.0))

    async def aclose(self) -> None:
        await self.backend.aclose()
        if self.cache is not None:
            self.cache.close()


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def unreachable(where: str, err: Exception) -> UserError:
    return UserError(f"cannot reach the teacher at {where} ({err}); start the server there or fix "
                     "`teacher.base_url` in the recipe (or pass --teacher-url), then run again: samples already "
                     "kept and cached teacher answers are reused")
