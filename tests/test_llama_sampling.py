"""Grammar-last sampling: the same greedy output as llama-cpp-python's grammar-everywhere sampling, always
valid, and the grammar steps in when the model's own choice breaks it."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

from test_runtime_fixtures import store_gguf  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

TOOL_SCHEMA = {
    "type": "object",
    "properties": {"tool": {"enum": ["set_timer", "get_weather", "none"]},
                   "arguments": {"type": "object", "properties": {"seconds": {"type": "integer"},
                                                                  "city": {"type": "string"}}}},
    "required": ["tool", "arguments"], "additionalProperties": False,
}
MESSAGES = [{"role": "system", "content": 'Reply with one JSON tool call {"tool": ..., "arguments": {...}}.'},
            {"role": "user", "content": "set a timer for ten minutes"}]


def grammar(schema):
    from llama_cpp.llama_grammar import LlamaGrammar

    return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)


def test_greedy_output_matches_full_grammar_sampling_and_validates(store_gguf):
    import llama_cpp

    from runtime.backends.llama_sampling import lazy_grammar_llama_class

    texts = []
    for cls in (llama_cpp.Llama, lazy_grammar_llama_class()):
        llm = cls(model_path=str(store_gguf), n_ctx=512, n_threads=2, verbose=False)
        try:
            reply = llm.create_chat_completion(messages=MESSAGES, grammar=grammar(TOOL_SCHEMA), temperature=0.0,
                                               max_tokens=48)
            texts.append(reply["choices"][0]["message"]["content"])
        finally:
            llm.close()
    assert texts[0] == texts[1]
    Draft202012Validator(TOOL_SCHEMA).validate(json.loads(texts[1]))


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_the_grammar_corrects_tokens_the_model_would_not_choose(store_gguf, temperature):
    from runtime.backends import llama_sampling

    llm = llama_sampling.lazy_grammar_llama_class()(model_path=str(store_gguf), n_ctx=512, n_threads=2, verbose=False)
    made = []
    original = llama_sampling.GrammarLastSampler.__init__

    def remember(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    schema = {"type": "object", "properties": {"code": {"const": "QX-17"}, "n": {"enum": [41, 42]}},
              "required": ["code", "n"], "additionalProperties": False}
    try:
        llama_sampling.GrammarLastSampler.__init__ = remember
        reply = llm.create_chat_completion(messages=MESSAGES, grammar=grammar(schema), temperature=temperature,
                                           max_tokens=48, seed=3)
    finally:
        llama_sampling.GrammarLastSampler.__init__ = original
        llm.close()
    value = json.loads(reply["choices"][0]["message"]["content"])
    assert value["code"] == "QX-17" and value["n"] in (41, 42)
    assert made and made[0].resampled > 0
