"""The output schema one request is decoded with: the bundle's schema with its copied fields held to the request's
words (runtime.copy_fields) and its derived numbers offered as arithmetic over the request's numbers
(runtime.derived_numbers). `Expert.run`, the server (for the bundle's own schema), the eval and the probe all
decode with it, so every score is what an app gets. Standard library only."""

from __future__ import annotations

from typing import Any

from runtime.copy_fields import copy_schema
from runtime.derived_numbers import derived_schema


def schema_for_request(schema: dict[str, Any] | None, text: str, copy_fields: list[str] | tuple[str, ...] = (),
                   derived_numbers: dict[str, list[int | float]] | None = None) -> dict[str, Any] | None:
    """`schema` for a request whose text is `text` (the schema itself when nothing applies)."""
    return derived_schema(copy_schema(schema, copy_fields, text), derived_numbers, text)
