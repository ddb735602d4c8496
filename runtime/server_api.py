"""The OpenAI-compatible wire format: request models, the error shape, and mapping a request onto params."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from runtime.params import GenerationParams


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.param, self.code)


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def as_template_message(self) -> dict[str, Any]:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        # Templates written for system/user/assistant do not know "developer" (OpenAI's newer name for system).
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class JSONSchemaFormat(BaseModel):
    name: str = "output"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields shared by chat and text completions; unknown OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)  # llama.cpp-server extension
    repeat_penalty: float | None = Field(default=None, gt=0)  # llama.cpp-server extension
    stop: str | list[str] | None = None
    seed: int | None = None
    cache_prompt: bool | None = None  # llama.cpp-server extension: false reads the prompt from scratch
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def params(self, base: GenerationParams) -> GenerationParams:
        return base.updated(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                            top_k=self.top_k, repeat_penalty=self.repeat_penalty, stop=self.stop, seed=self.seed,
                            cache_prompt=self.cache_prompt)


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None

    def params(self, base: GenerationParams) -> GenerationParams:
        params = super().params(base).updated(max_tokens=self.max_completion_tokens)
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return params
        if fmt.type == "json_object":
            return params.updated(json_object=True)
        if fmt.json_schema is None or not fmt.json_schema.schema_:
            raise APIError(400, "response_format json_schema needs json_schema.schema", param="response_format")
        return params.updated(json_schema=fmt.json_schema.schema_)


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise APIError(400, "this server completes one prompt per request", param="prompt")
        return self.prompt[0]


def completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())
