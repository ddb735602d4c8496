"""The original tokenizer of a GGUF, rebuilt as a Hugging Face fast tokenizer (the fix for the GGUF round trip).

Why: transformers' GGUF loader turns a GPT-2-style BPE vocabulary (``tokenizer.ggml.model = gpt2``) into a
tokenizer that saves a bogus ``tokenizer.model``, drops the pre-tokenizer's digit split, adds a BOS and
names the wrong EOS. llama.cpp's converter then writes a sentencepiece-style ``llama`` vocabulary without
merges, and llama.cpp aborts the process on the first tokenize. We rebuild the tokenizer from the source
GGUF's own metadata instead (vocabulary, merges, token types, pre-tokenizer, special tokens, BOS/EOS
policy, chat template), so the merged model, the converter and llama.cpp all see the original tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kit.core.errors import UserError

# llama.cpp pre-tokenizer names (tokenizer.ggml.pre) -> the Hugging Face pre-tokenizer that splits alike
# (regexes from llama.cpp's src/llama-vocab.cpp and the models' own tokenizer.json).
_GPT2 = "gpt2"
_DIGITS_GPT2 = "digits+gpt2"
_QWEN2 = "qwen2"
_LLAMA3 = "llama3"
PRE_TOKENIZER_FAMILY = {
    "gpt-2": _GPT2, "gpt2": _GPT2, "mpt": _GPT2, "olmo": _GPT2, "jais": _GPT2,
    "smollm": _DIGITS_GPT2, "starcoder": _DIGITS_GPT2, "refact": _DIGITS_GPT2, "codeshell": _DIGITS_GPT2,
    "command-r": _DIGITS_GPT2, "exaone": _DIGITS_GPT2, "minerva-7b": _DIGITS_GPT2,
    "qwen2": _QWEN2, "stablelm2": _QWEN2,
    "llama3": _LLAMA3, "llama-v3": _LLAMA3, "llama-bpe": _LLAMA3, "falcon3": _LLAMA3, "pixtral": _LLAMA3,
}
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")

# GGUF token types (gguf.TokenType)
_CONTROL, _USER_DEFINED, _UNUSED = 3, 4, 5

# The KVs that decide how llama.cpp tokenizes; a converted GGUF must carry the source's values.
TOKENIZER_KEYS = (
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
)


def read_gguf_metadata(path: Path, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The GGUF's key/value metadata (all of it, or only `keys`), as Python values."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    wanted = reader.fields if keys is None else {k: reader.fields[k] for k in keys if k in reader.fields}
    return {key: field.contents() for key, field in wanted.items() if not key.startswith("GGUF.")}


def _pre_tokenizer(pre: str):
    from tokenizers import Regex, pre_tokenizers

    family = PRE_TOKENIZER_FAMILY.get(pre)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=family in (_GPT2, _DIGITS_GPT2))
    if family == _GPT2:
        return byte_level
    if family == _DIGITS_GPT2:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if family in (_QWEN2, _LLAMA3):
        regex = _QWEN2_REGEX if family == _QWEN2 else _LLAMA3_REGEX
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated"), byte_level])
    known = ", ".join(sorted(PRE_TOKENIZER_FAMILY))
    raise UserError(f"the source GGUF's pre-tokenizer '{pre}' is not one microkit can carry through "
                    f"(known: {known}); export from a Hugging Face folder of the model instead")


def tokenizer_from_gguf(path: Path):
    """A PreTrainedTokenizerFast equal to the GGUF's own (gpt2/BPE) tokenizer, chat template included."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    meta = read_gguf_metadata(path)
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UserError(f"{path} has a '{kind}' tokenizer; only GPT-2-style BPE GGUF tokenizers are rebuilt. "
                        "Export from a Hugging Face folder of the model instead")
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    types: list[int] = list(meta["tokenizer.ggml.token_type"])
    merges = [tuple(m.split(" ")) for m in meta.get("tokenizer.ggml.merges", [])]
    if not merges or any(len(m) != 2 for m in merges):
        raise UserError(f"{path} carries no usable BPE merges; it cannot serve as a tokenizer source")
    # UNUSED entries ([PAD151665]...) only pad the vocabulary to the embedding's size: leaving them out lets
    # llama.cpp's converter mark them UNUSED again, as the source does, instead of as normal tokens
    vocab = {t: i for i, t in enumerate(tokens) if types[i] != _UNUSED}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges,
                                   ignore_merges=False, byte_fallback=False))
    backend.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"))
    backend.decoder = decoders.ByteLevel()
    added = [AddedToken(tokens[i], special=types[i] == _CONTROL, normalized=False)
             for i in range(len(tokens)) if types[i] in (_CONTROL, _USER_DEFINED)]
    backend.add_tokens(added)

    def token(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    bos, eos = token("bos"), token("eos")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    if add_bos or add_eos:
        single = " ".join([*(["$BOS"] if add_bos else []), "$A", *(["$EOS"] if add_eos else [])])
        single = single.replace("$BOS", bos or "").replace("$EOS", eos or "")
        specials = [(t, tokens.index(t)) for t in {x for x in (bos if add_bos else None, eos if add_eos else None) if x}]
        backend.post_processor = processors.TemplateProcessing(single=single, pair=f"{single} $B", special_tokens=specials)
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token=token("unknown"),
        pad_token=token("padding") or eos, chat_template=meta.get("tokenizer.chat_template"),
        add_bos_token=add_bos, add_eos_token=add_eos, clean_up_tokenization_spaces=False,
        model_max_length=int(meta.get(f"{meta.get('general.architecture', '')}.context_length", 2048)),
        model_input_names=["input_ids", "attention_mask"],  # causal LMs take no token_type_ids
    )
    return tokenizer


def tokenizer_differences(source: Path, converted: Path) -> list[str]:
    """Tokenizer KVs in which the converted GGUF differs from the source GGUF (empty: identical)."""
    want = read_gguf_metadata(source, TOKENIZER_KEYS)
    have = read_gguf_metadata(converted, TOKENIZER_KEYS)
    diffs = []
    for key in TOKENIZER_KEYS:
        if key.endswith(("add_bos_token", "add_eos_token")):
            same = bool(want.get(key, False)) == bool(have.get(key, False))
        else:
            same = want.get(key) == have.get(key)
        if not same:
            diffs.append(key)
    return diffs
