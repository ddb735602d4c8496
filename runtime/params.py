"""Generation parameters shared by every backend, and what a generation reports back."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from runtime.manifest import GenerationDefaults

_DEFAULTS = GenerationDefaults()  # the one place the sampling defaults are written


@dataclass(frozen=True)
class GenerationParams:
    """One request's sampling settings; temperature 0 means greedy."""

    max_tokens: int = _DEFAULTS.max_tokens
    temperature: float = _DEFAULTS.temperature
    top_p: float = _DEFAULTS.top_p
    top_k: int = _DEFAULTS.top_k
    repeat_penalty: float = _DEFAULTS.repeat_penalty
    stop: tuple[str, ...] = tuple(_DEFAULTS.stop)
    seed: int | None = None
    json_schema: dict[str, Any] | None = None  # constrain the output to this JSON schema
    json_object: bool = False  # constrain the output to any JSON value
    # start from the longest prompt prefix a slot still holds (GGUF), like llama-server's `cache_prompt`; False
    # reads the prompt from its first token, so the answer cannot depend on what was decoded before it
    cache_prompt: bool = True

    @classmethod
    def from_defaults(cls, defaults: GenerationDefaults) -> "GenerationParams":
        return cls(max_tokens=defaults.max_tokens, temperature=defaults.temperature, top_p=defaults.top_p,
                   top_k=defaults.top_k, repeat_penalty=defaults.repeat_penalty, stop=tuple(defaults.stop))

    def updated(self, **overrides: Any) -> "GenerationParams":
        """A copy with the given (non-None) overrides; unknown names are a TypeError."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown generation parameter(s): {', '.join(sorted(unknown))}")
        given = {k: v for k, v in overrides.items() if v is not None}
        if isinstance(given.get("stop"), str):
            given["stop"] = (given["stop"],)
        elif "stop" in given:
            given["stop"] = tuple(given["stop"])
        return replace(self, **given)


@dataclass
class GenerationStats:
    """Filled in by a backend while it generates."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None  # "stop" | "length"
    extra: dict[str, Any] = field(default_factory=dict)
