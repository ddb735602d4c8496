"""Generation parameters shared by every backend, and what a generation reports back."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from runtime.manifest import GenerationDefaults


@dataclass(frozen=True)
class GenerationParams:
    """One request's sampling settings; temperature 0 means greedy."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 40
    repeat_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    json_schema: dict[str, Any] | None = None  # constrain the output to this JSON schema
    json_object: bool = False  # constrain the output to any JSON value

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
