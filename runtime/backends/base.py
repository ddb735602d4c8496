"""The interface every backend implements: tokens in, text pieces out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

from runtime.params import GenerationParams, GenerationStats


@dataclass(frozen=True)
class LoadOptions:
    device: str = "auto"  # auto | cpu | gpu
    n_ctx: int = 2048
    n_threads: int | None = None  # None: the backend's own default


class Backend(Protocol):
    name: str
    device: str  # where it actually runs: "cpu" or "gpu"
    bos_token: str
    eos_token: str
    chat_template: str | None  # the model's own template, if it carries one
    constrains_json: bool  # honours GenerationParams.json_schema / json_object while sampling

    def generate(self, prompt: str, params: GenerationParams, stats: GenerationStats) -> Iterator[str]:
        """Yield the completion of `prompt` as text pieces; fill `stats` as it goes."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def close(self) -> None: ...
