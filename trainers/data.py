"""The distilled dataset as training rows: chat-templated token ids, loss on the assistant's tokens only."""

from __future__ import annotations

from typing import Any

from kit.core.dataset import SPLITS, with_system_prompt
from kit.core.errors import UserError


def prompt_and_answer(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Split a conversation into its prompt (everything before) and the final assistant message."""
    if not messages or messages[-1]["role"] != "assistant":
        raise UserError("every training conversation must end with an assistant message; re-run `kit generate`")
    return messages[:-1], messages[-1]


def tokenize_conversation(tokenizer, messages: list[dict[str, str]], max_len: int) -> dict[str, list[int]]:
    """Token ids of the chat-templated conversation; labels are -100 outside the final assistant turn.

    The assistant turn starts where `prompt + generation prompt` and the full conversation stop agreeing,
    as in trl's prompt-completion preparation, so the end-of-turn token is trained too.
    """
    prompt, answer = prompt_and_answer(messages)
    prompt_ids = _template_ids(tokenizer, prompt, add_generation_prompt=True)
    full_ids = _template_ids(tokenizer, [*prompt, answer], add_generation_prompt=False)
    start = common_prefix(prompt_ids, full_ids)
    labels = [-100] * start + full_ids[start:]
    return {"input_ids": full_ids[:max_len], "labels": labels[:max_len]}


KEEP = object()  # keep each row's own system message


def tokenized_splits(tokenizer, data, max_len: int, system_prompt: str | None | object = KEEP):
    """Every split as `input_ids` / `labels`; rows left without a trained token by truncation are dropped.
    `system_prompt` replaces the rows' system message (None drops it): the student's own prompt."""
    def encode(row: dict[str, Any]) -> dict[str, list[int]]:
        messages = row["messages"] if system_prompt is KEEP else with_system_prompt(row["messages"], system_prompt)
        return tokenize_conversation(tokenizer, messages, max_len)

    out = {}
    for split in SPLITS:
        # in memory: cache files written beside the saved dataset would change its fingerprint (the stage input)
        encoded = data[split].map(encode, remove_columns=data[split].column_names, desc=f"tokenizing {split}",
                                  keep_in_memory=True)
        kept = encoded.filter(lambda row: any(label != -100 for label in row["labels"][1:]), keep_in_memory=True)
        if len(kept) == 0:
            raise UserError(f"no {split} example keeps an answer token within max_seq_len={max_len}: raise train.max_seq_len")
        out[split] = kept
    return out


def _template_ids(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("the student's tokenizer has no chat template: use an instruct/chat student model")
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
