"""`openai`: any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp's servers, LM Studio)."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from kit.core.errors import UserError
from kit.distill.teachers.base import Completion, Messages, TeacherBackend, TransientTeacherError, unreachable

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}


ASIDE_FIRST_S = 2.0  # an endpoint that failed is set aside this long, doubling with each failure in a row
ASIDE_MAX_S = 60.0


@dataclass
class Endpoint:
    """One OpenAI-compatible server of a teacher that may have several."""

    url: str
    http: Any
    response_format: str  # the JSON-Schema form this endpoint speaks (found out per endpoint)
    logprobs: bool = True  # False once it refused `logprobs` (some models do); then its replies carry none
    in_flight: int = 0
    requests: int = 0  # answered
    failures: int = 0  # requests that failed here (the retry went elsewhere)
    failures_in_row: int = 0
    aside_until: float = 0.0  # monotonic time before which it gets no request while another one is available

    def figures(self) -> dict[str, Any]:
        return {"requests": self.requests, "failures": self.failures}


class OpenAITeacher(TeacherBackend):
    """One endpoint or several serving the same model: each request goes to the least busy endpoint not set
    aside; an endpoint that drops a connection, times out or answers 5xx/429 is set aside (2 s, doubling up to a
    minute with each failure in a row) and the client's retry goes to another one. The request cache keys on the
    request, not the endpoint, so it stays one cache."""

    name = "openai"

    def __init__(self, config):
        super().__init__(config)
        import httpx

        urls = [url.rstrip("/") for url in (config.base_urls or [DEFAULT_BASE_URL])]
        headers = {}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)  # the recipe names the variable; the key never enters it
            if not key:
                raise UserError(f"the teacher's API key is not set: export {config.api_key_env}=... "
                                "(or change `teacher.api_key_env`)")
            headers["Authorization"] = f"Bearer {key}"
        limits = httpx.Limits(max_connections=config.concurrency + 2, max_keepalive_connections=config.concurrency + 2)
        timeout = httpx.Timeout(config.timeout_s, connect=min(10.0, config.timeout_s))
        # "json_schema" is the OpenAI form; llama-cpp-python's server only knows {type: json_object, schema}.
        form = "json_schema" if config.response_format == "auto" else config.response_format
        self.endpoints = [Endpoint(url, httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=timeout),
                                   form) for url in dict.fromkeys(urls)]

    @property
    def where(self) -> str:
        return ", ".join(e.url for e in self.endpoints)

    def notes(self) -> list[str]:
        if not self.token_probs:
            return []
        notes = ["token probabilities come from the endpoint's `logprobs`: the model's own, before the JSON grammar "
                 "masked its choices, so never above the probability among the tokens the grammar allowed (what a "
                 "local llama_cpp teacher reports); the `confident` check cuts at least as much as with it"]
        refused = [e.url for e in self.endpoints if not e.logprobs]
        if refused:
            notes.append(f"{', '.join(refused)} refused `logprobs`: its answers carry no token probabilities and "
                         "pass the `confident` check")
        return notes

    def endpoint_figures(self) -> dict[str, dict[str, Any]] | None:
        """Requests answered and failed per endpoint (None with a single endpoint)."""
        return {e.url: e.figures() for e in self.endpoints} if len(self.endpoints) > 1 else None

    async def check(self) -> None:
        """Every endpoint is asked for its models; one that does not answer is set aside (the run starts on the
        others), a refused key stops the run; none reachable is an error."""
        import httpx

        problems = []
        for endpoint in self.endpoints:
            try:
                response = await endpoint.http.get("/models", timeout=min(10.0, self.config.timeout_s))
            except (httpx.TransportError, httpx.TimeoutException) as err:
                problems.append(err.__class__.__name__ if not str(err) else str(err))
                self._set_aside(endpoint)
                continue
            if response.status_code in (401, 403):
                raise UserError(f"the teacher at {endpoint.url} refused the key ({response.status_code}); check "
                                f"the variable named in `teacher.api_key_env`")
        if len(problems) == len(self.endpoints):
            raise unreachable(self.where, problems[0])

    async def complete(self, messages: Messages, schema: dict[str, Any] | None, params: dict[str, Any]) -> Completion:
        endpoint = self._pick()
        endpoint.in_flight += 1
        try:
            result = await self._complete_at(endpoint, messages, schema, params)
        except TransientTeacherError as err:
            endpoint.failures += 1
            if err.set_aside:
                self._set_aside(endpoint, err.retry_after)
            raise
        finally:
            endpoint.in_flight -= 1
        endpoint.requests += 1
        endpoint.failures_in_row, endpoint.aside_until = 0, 0.0
        return result

    async def _complete_at(self, endpoint: Endpoint, messages: Messages, schema: dict[str, Any] | None,
                           params: dict[str, Any]) -> Completion:
        body: dict[str, Any] = {"model": self.config.model, "messages": messages, **params}
        if schema is not None:
            body["response_format"] = self._response_format(endpoint, schema)
            if self.token_probs and endpoint.logprobs:  # the chosen token's own log probability, no alternatives
                body |= {"logprobs": True, "top_logprobs": 1}  # (llama-cpp-python's server needs top_logprobs)
        response = await self._post(endpoint, body)
        for _ in range(2):  # an endpoint may refuse both the response_format form and logprobs, once each
            if response.status_code < 400:
                break
            # llama-cpp-python's server answers a response_format it does not know with 500, others with 400/422
            sent = body.get("response_format", {}).get("type")
            if sent == "json_schema" and self.config.response_format == "auto" and "response_format" in response.text:
                endpoint.response_format = "json_object"  # the endpoint told us which form it speaks; keep using it
                body["response_format"] = self._response_format(endpoint, schema)
            elif "logprobs" in body and response.status_code in (400, 422) and "logprob" in response.text:
                endpoint.logprobs = False  # e.g. a reasoning model: "logprobs are not supported with this model"
                del body["logprobs"], body["top_logprobs"]
            else:
                break
            response = await self._post(endpoint, body)
        return _parse(response, endpoint.url)

    def _pick(self) -> Endpoint:
        """The least busy endpoint not set aside (ties: the one that answered fewest); with every endpoint set
        aside, the one whose time is up first."""
        now = time.monotonic()
        ready = [e for e in self.endpoints if e.aside_until <= now]
        if not ready:
            return min(self.endpoints, key=lambda e: e.aside_until)
        return min(ready, key=lambda e: (e.in_flight, e.requests))

    @staticmethod
    def _set_aside(endpoint: Endpoint, retry_after: float | None = None) -> None:
        endpoint.failures_in_row += 1
        wait = min(ASIDE_MAX_S, ASIDE_FIRST_S * 2 ** (endpoint.failures_in_row - 1))
        endpoint.aside_until = time.monotonic() + max(wait, retry_after or 0.0)

    @staticmethod
    def _response_format(endpoint: Endpoint, schema: dict[str, Any]) -> dict[str, Any]:
        if endpoint.response_format == "json_object":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}

    @staticmethod
    async def _post(endpoint: Endpoint, body: dict[str, Any]):
        import httpx

        try:
            return await endpoint.http.post("/chat/completions", json=body)
        except httpx.TimeoutException as err:
            raise TransientTeacherError(f"timeout: {err.__class__.__name__}", set_aside=True) from None
        except httpx.TransportError as err:
            connection = isinstance(err, httpx.ConnectError)
            raise TransientTeacherError(f"connection: {err.__class__.__name__} {err}", connection=connection,
                                        set_aside=True) from None

    async def aclose(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.http.aclose()


def _parse(response, base_url: str) -> Completion:
    status = response.status_code
    if status in RETRY_STATUSES:
        retry_after = response.headers.get("retry-after")
        raise TransientTeacherError(f"http {status}: {response.text[:200]}",
                                    retry_after=float(retry_after) if _is_number(retry_after) else None,
                                    set_aside=status >= 429)
    if status in (401, 403):
        raise UserError(f"the teacher at {base_url} refused the key ({status}); check `teacher.api_key_env`")
    if status == 404:
        raise UserError(f"{base_url}/chat/completions answered 404 ({response.text[:200]}); check "
                        "`teacher.base_url` (it usually ends in /v1) and `teacher.model`")
    if status >= 400:
        raise UserError(f"the teacher at {base_url} rejected the request ({status}: {response.text[:300]})")
    try:
        data = response.json()
        choice = data["choices"][0]
        text = choice["message"]["content"] or ""
        usage = data.get("usage") or {}
    except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
        raise TransientTeacherError(f"malformed response: {err.__class__.__name__}") from None
    return Completion(text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                      token_probs=_token_probs(choice.get("logprobs")))


def _token_probs(logprobs: Any) -> tuple[tuple[str, float], ...] | None:
    """(token, probability) per token from a chat choice's `logprobs.content` (the OpenAI form, also vLLM's,
    llama.cpp's and llama-cpp-python's); None when the endpoint sent none or something else."""
    try:
        content = logprobs["content"]
        pairs = tuple((str(t["token"]), math.exp(min(0.0, float(t["logprob"])))) for t in content)
    except (KeyError, TypeError, ValueError):
        return None
    return pairs or None


def _is_number(value: str | None) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
        return True
    except (TypeError, ValueError):
        return False
