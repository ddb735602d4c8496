"""JSON schemas as llama.cpp grammars (GBNF), cached: what the GGUF backend and the batch engine constrain with."""

from __future__ import annotations

import json
from functools import lru_cache

from runtime.params import GenerationParams

# llama-cpp-python's schema converter lets a JSON string hold raw control characters (a newline), which no
# JSON parser accepts; llama.cpp's own converter and its json.gbnf exclude them.
_LOOSE_CHAR = r'char ::= [^"\\] |'
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def json_schema_gbnf(schema_json: str) -> str:
    """GBNF for a JSON schema (properties in the schema's key order), strings without control characters."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(schema_json).replace(_LOOSE_CHAR, _JSON_CHAR)


@lru_cache(maxsize=32)
def _grammar(schema_json: str | None):
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import JSON_GBNF

    return LlamaGrammar.from_string(JSON_GBNF if schema_json is None else json_schema_gbnf(schema_json), verbose=False)


def grammar_for(params: GenerationParams):
    """The llama.cpp grammar that constrains output to the params' JSON schema (or any JSON), else None."""
    if params.json_schema is not None:
        return _grammar(json.dumps(params.json_schema))  # key order is the grammar's property order: keep it
    return _grammar(None) if params.json_object else None
