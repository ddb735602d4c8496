"""Errors a runtime user can cause: a bad bundle, or an output that breaks the bundle's schema."""

from __future__ import annotations

from runtime.manifest import BundleError

__all__ = ["BundleError", "ContextLengthError", "OutputError"]


class OutputError(ValueError):
    """The model's answer is not valid JSON for the bundle's output schema (the raw text is kept)."""

    def __init__(self, message: str, text: str):
        super().__init__(message)
        self.text = text


class ContextLengthError(ValueError):
    """The prompt does not fit the model's context window."""
