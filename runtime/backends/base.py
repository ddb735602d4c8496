"""The interface every backend implements: tokens in, text pieces out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

from runtime.params import GenerationParams, GenerationStats


def default_threads() -> int:
    """CPU threads for llama.cpp when none are asked for: the physical cores this process may use.
    (llama-cpp-python's own default, half the logical CPUs, assumes two threads per core: on a 2-core
    machine without SMT it decodes on one core, about 30% slower.)"""
    import os

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = None
    return max(1, min(physical or usable, usable))


@dataclass(frozen=True)
class LoadOptions:
    device: str = "auto"  # auto | cpu | gpu
    n_ctx: int = 2048
    n_threads: int | None = None  # None: the backend's own default
    parallel: int = 1  # requests decoded together (GGUF: continuous batching in one llama.cpp context)


class Backend(Protocol):
    name: str
    device: str  # where it actually runs: "cpu" or "gpu"
    bos_token: str
    eos_token: str
    chat_template: str | None  # the model's own template, if it carries one
    constrains_json: bool  # honours GenerationParams.json_schema / json_object while sampling
    parallel: int  # generations it runs at once; above 1, `generate` may be called from several threads

    def generate(self, prompt: str, params: GenerationParams, stats: GenerationStats) -> Iterator[str]:
        """Yield the completion of `prompt` as text pieces; fill `stats` as it goes."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def close(self) -> None: ...
