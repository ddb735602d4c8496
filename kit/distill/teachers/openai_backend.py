"""`openai`: any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp's servers, LM Studio)."""

from __future__ import annotations

import json
import os
from typing import Any

from kit.core.errors import UserError
from kit.distill.teachers.base import Completion, Messages, TeacherBackend, TransientTeacherError, unreachable

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAITeacher(TeacherBackend):
    name = "openai"

    def __init__(self, config):
        super().__init__(config)
        import httpx

        self.base_url = (config.base_url or DEFAULT_BASE_URL).rstrip("/")
        headers = {}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)  # the recipe names the variable; the key never enters it
            if not key:
                raise UserError(f"the teacher's API key is not set: export {config.api_key_env}=... "
                                "(or change `teacher.api_key_env`)")
            headers["Authorization"] = f"Bearer {key}"
        limits = httpx.Limits(max_connections=config.concurrency + 2, max_keepalive_connections=config.concurrency + 2)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, limits=limits,
                                       timeout=httpx.Timeout(config.timeout_s, connect=min(10.0, config.timeout_s)))
        # "json_schema" is the OpenAI form; llama-cpp-python's server only knows {type: json_object, schema}.
        self._format = "json_schema" if config.response_format == "auto" else config.response_format

    @property
    def where(self) -> str:
        return self.base_url

    async def check(self) -> None:
        import httpx

        try:
            response = await self._http.get("/models", timeout=min(10.0, self.config.timeout_s))
        except (httpx.TransportError, httpx.TimeoutException) as err:
            raise unreachable(self.base_url, err.__class__.__name__ if not str(err) else err) from None
        if response.status_code in (401, 403):
            raise UserError(f"the teacher at {self.base_url} refused the key ({response.status_code}); check "
                            f"the variable named in `teacher.api_key_env`")

    async def complete(self, messages: Messages, schema: dict[str, Any] | None, params: dict[str, Any]) -> Completion:
        body: dict[str, Any] = {"model": self.config.model, "messages": messages, **params}
        if schema is not None:
            body["response_format"] = self._response_format(schema)
        response = await self._post(body)
        # llama-cpp-python's server answers a response_format it does not know with 500, others with 400/422
        sent = body.get("response_format", {}).get("type")
        if response.status_code >= 400 and sent == "json_schema" and self.config.response_format == "auto" \
                and "response_format" in response.text:
            self._format = "json_object"  # the endpoint told us which form it speaks; keep using that one
            body["response_format"] = self._response_format(schema)
            response = await self._post(body)
        return _parse(response, self.base_url)

    def _response_format(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self._format == "json_object":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}

    async def _post(self, body: dict[str, Any]):
        import httpx

        try:
            return await self._http.post("/chat/completions", json=body)
        except httpx.TimeoutException as err:
            raise TransientTeacherError(f"timeout: {err.__class__.__name__}") from None
        except httpx.TransportError as err:
            connection = isinstance(err, httpx.ConnectError)
            raise TransientTeacherError(f"connection: {err.__class__.__name__} {err}", connection=connection) from None

    async def aclose(self) -> None:
        await self._http.aclose()


def _parse(response, base_url: str) -> Completion:
    status = response.status_code
    if status in RETRY_STATUSES:
        retry_after = response.headers.get("retry-after")
        raise TransientTeacherError(f"http {status}: {response.text[:200]}",
                                    retry_after=float(retry_after) if _is_number(retry_after) else None)
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
    return Completion(text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


def _is_number(value: str | None) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
        return True
    except (TypeError, ValueError):
        return False
