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


# the second task of distilling step-by-step (Hsieh et al., 2023): asked after the request, so the request's own
# tokens read exactly as in the answer task (causal attention) and the plain request still asks for the answer
RATIONALE_ASK = "Explain step by step how the answer follows from this request."


def tokenized_splits(tokenizer, data, max_len: int, system_prompt: str | None | object = KEEP,
                     rationales: bool = False):
    """Every split as `input_ids` / `labels`; rows left without a trained token by truncation are dropped.
    `system_prompt` replaces the rows' system message (None drops it): the student's own prompt. With
    `rationales`, the training split also trains each row's `reasoning` as a second task (rationale_rows); the
    validation split stays the answer task alone."""
    def encode(row: dict[str, Any]) -> dict[str, list[int]]:
        messages = row["messages"] if system_prompt is KEEP else with_system_prompt(row["messages"], system_prompt)
        return tokenize_conversation(tokenizer, messages, max_len)

    out = {}
    for split in SPLITS:
        rows = rationale_rows(data[split]) if rationales and split == "train" else data[split]
        # in memory: cache files written beside the saved dataset would change its fingerprint (the stage input)
        encoded = rows.map(encode, remove_columns=rows.column_names, desc=f"tokenizing {split}",
                           keep_in_memory=True)
        kept = encoded.filter(lambda row: any(label != -100 for label in row["labels"][1:]), keep_in_memory=True)
        if len(kept) == 0:
            raise UserError(f"no {split} example keeps an answer token within max_seq_len={max_len}: raise train.max_seq_len")
        out[split] = kept
    return out


def rationale_rows(rows):
    """`rows` and, after them, one row per row with reasoning: the request with `RATIONALE_ASK` after it, the
    teacher's reasoning as the answer (id "<id>:rationale")."""
    from datasets import concatenate_datasets

    explained = rows.filter(lambda row: bool((row.get("reasoning") or "").strip()), keep_in_memory=True)
    if len(explained) == 0:
        raise UserError("train.rationales needs the teacher's reasoning in the dataset: set data.reasoning: true "
                        "(or train.rationales: false) and run `kit generate` again")

    def explain(row: dict[str, Any]) -> dict[str, Any]:
        prompt, _ = prompt_and_answer(row["messages"])
        *head, request = prompt
        asked = {"role": request["role"], "content": f"{request['content']}\n\n{RATIONALE_ASK}"}
        return {"id": f"{row['id']}:rationale",
                "messages": [*head, asked, {"role": "assistant", "content": row["reasoning"].strip()}]}

    return concatenate_datasets([rows, explained.map(explain, keep_in_memory=True)])


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
