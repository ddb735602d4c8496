"""Grammar-last sampling: the same greedy output as llama-cpp-python's grammar-everywhere sampling, always
valid, and the grammar steps in when the model's own choice breaks it."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

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


def test_schema_strings_cannot_hold_raw_newlines(store_gguf):
    """llama-cpp-python's own converter lets a string hold a newline (not JSON); the runtime's grammar does not."""
    import ctypes
    import math

    import llama_cpp

    from runtime.backends.gguf import json_schema_gbnf

    schema = json.dumps({"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]})
    llm = llama_cpp.Llama(model_path=str(store_gguf), vocab_only=True, verbose=False)
    vocab = llm._model.vocab
    newline = llm.tokenize(b"\n", add_bos=False, special=False)
    assert len(newline) == 1

    def newline_allowed(gbnf: str) -> bool:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        try:
            for token in llm.tokenize(b'{"capital": "Lim', add_bos=False, special=False):
                llama_cpp.llama_sampler_accept(sampler, token)
            one = llama_cpp.llama_token_data(id=newline[0], logit=1.0, p=0.0)
            array = llama_cpp.llama_token_data_array(data=ctypes.pointer(one), size=1, selected=-1, sorted=False)
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
            return not math.isinf(one.logit)
        finally:
            llama_cpp.llama_sampler_free(sampler)

    try:
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        assert newline_allowed(json_schema_to_gbnf(schema))  # the upstream converter's gap
        assert not newline_allowed(json_schema_gbnf(schema))
    finally:
        llm.close()
