"""What an exported model folder's tokenizer files say about special tokens and the chat template (ONNX backends)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file's object, or {} when the file is absent."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def token_text(value: Any) -> str:
    """tokenizer_config.json writes special tokens as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content", "")
    return value or ""


@dataclass(frozen=True)
class TokenizerSide:
    bos_token: str
    eos_token: str
    chat_template: str | None  # tokenizer_config.json's, else chat_template.jinja's


def tokenizer_side(folder: Path) -> TokenizerSide:
    config = read_json(folder / "tokenizer_config.json")
    template = folder / "chat_template.jinja"
    return TokenizerSide(token_text(config.get("bos_token")), token_text(config.get("eos_token")),
                         config.get("chat_template") or (template.read_text(encoding="utf-8") if template.is_file()
                                                         else None))
