"""Teachers: a registry maps the recipe's `teacher.backend` to a class; adding one is one new file."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from kit.distill.config import TeacherConfig
from kit.distill.teachers.base import (
    Completion,
    TeacherBackend,
    TeacherClient,
    TeacherRequestFailed,
    TeacherUsage,
    TransientTeacherError,
)
from kit.distill.teachers.cache import RequestCache

TEACHERS = {
    "openai": "kit.distill.teachers.openai_backend:OpenAITeacher",
    "llama_cpp": "kit.distill.teachers.llama_cpp_backend:LlamaCppTeacher",
    "hf": "kit.distill.teachers.hf_backend:HFTeacher",
}


def make_backend(config: TeacherConfig, token_probs: bool = False) -> TeacherBackend:
    """The configured backend; with `token_probs` it reports how sure it was of each token of a reply under a JSON
    schema, where it can (the `confident` check reads them)."""
    module, cls = TEACHERS[config.backend].split(":")
    backend = getattr(import_module(module), cls)(config)
    backend.token_probs = token_probs
    return backend


def make_teacher(config: TeacherConfig, cache_path: Path | None, token_probs: bool = False) -> TeacherClient:
    """A ready client for the configured backend (`token_probs`: see make_backend); `cache_path` None disables the
    request cache."""
    return TeacherClient(make_backend(config, token_probs), RequestCache(cache_path) if cache_path else None)


__all__ = ["Completion", "RequestCache", "TEACHERS", "TeacherBackend", "TeacherClient", "TeacherRequestFailed",
           "TeacherUsage", "TransientTeacherError", "make_backend", "make_teacher"]
