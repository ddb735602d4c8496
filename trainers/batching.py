"""Training batches that send a prompt shared by every row of the batch through the model once.

A recipe's rows usually start with the same tokens: the chat template's head and the task's system prompt
(200 tokens of database schema for a text-to-SQL expert, against 30 of question and 40 of answer). Causal
attention means those positions' hidden states do not depend on what follows them, so they are the same in
every row: the collator cuts the shared prefix off, `forward_with_shared_prefix` runs it once with batch
size 1, repeats its key/value cache over the batch, and runs the rows' own tokens (right-padded) on top of
it. Gradients flow through the repeated cache into the prefix's single pass, so the loss and its gradient
equal those of the full rows (up to float rounding; LoRA dropout on the prefix is drawn once per batch).

Batches where sharing does not pay fall back to trl's collator (padding-free when `train.packing` is on
and the row stays short, padded otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainers.data import common_prefix

PREFIX_IDS = "prefix_ids"


def shared_prefix_length(input_ids: list[list[int]], labels: list[list[int]]) -> int:
    """Tokens every row starts with, stopping before any row's first trained token.

    The prefix's own logits are never computed, so no token it predicts (positions 1..P) may be trained:
    P is at most each row's first trained position minus one, which also leaves every row a suffix.
    """
    length = min(common_prefix(input_ids[0], row) for row in input_ids)
    for row_labels in labels:
        trained = next((i for i, label in enumerate(row_labels) if label != -100), len(row_labels))
        length = min(length, trained - 1)
    return max(0, length)


PACKED_ROW_LIMIT = 1024  # a padding-free row attends over all of its tokens: past this, padded rows are cheaper


@dataclass
class SharedPrefixCollator:
    """Batches in the cheapest of three layouts, by the tokens the model runs over:

    * shared prefix: the rows' shared prompt cut off and sent once as `prefix_ids` [1, P]; `input_ids` and
      `labels` are [B, S] (the rows' own tokens, right-padded), `attention_mask` is [B, P + S];
    * padding-free (trl's, with `packing`): one row of every example, position ids restarting per example;
    * padded (trl's): [B, L] with an attention mask.

    Sharing pays when P + B*S (prefix once, padded suffixes) is below the rows' total length. A padding-free row
    costs attention over its whole length (SDPA on CPU has no variable-length kernel: 8 rows of 250 tokens
    trained 1.7x slower packed than padded, at twice the memory), so past PACKED_ROW_LIMIT tokens rows are padded.
    """

    pad_token_id: int
    packing: bool = True
    min_prefix: int = 16

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        ids = [list(e["input_ids"]) for e in examples]
        labels = [list(e["labels"]) for e in examples]
        total = sum(len(i) for i in ids)
        prefix = shared_prefix_length(ids, labels)
        if prefix >= self.min_prefix and prefix + len(ids) * (max(len(i) for i in ids) - prefix) <= total:
            return self._shared(ids, labels, prefix)
        padding_free = self.packing and total <= PACKED_ROW_LIMIT
        collate = DataCollatorForLanguageModeling(pad_token_id=self.pad_token_id, padding_free=padding_free)
        return collate([{"input_ids": i, "labels": lab} for i, lab in zip(ids, labels)])

    def _shared(self, ids: list[list[int]], labels: list[list[int]], prefix: int) -> dict[str, Any]:
        import torch

        rows, row_labels = [i[prefix:] for i in ids], [lab[prefix:] for lab in labels]
        width = max(len(r) for r in rows)
        return {
            "input_ids": torch.tensor([r + [self.pad_token_id] * (width - len(r)) for r in rows]),
            # over prefix and row, as a model with a cache expects; its sum counts every row's real tokens
            "attention_mask": torch.tensor([[1] * (prefix + len(r)) + [0] * (width - len(r)) for r in rows]),
            "labels": torch.tensor([lab + [-100] * (width - len(lab)) for lab in row_labels]),
            PREFIX_IDS: torch.tensor([ids[0][:prefix]]),
        }


def forward_rows(model, inputs: dict[str, Any], logits_to_keep):
    """The model's output on a collated batch (no labels), in whichever layout the collator chose."""
    inputs = dict(inputs)
    prefix_ids = inputs.pop(PREFIX_IDS, None)
    if prefix_ids is not None:
        return forward_with_shared_prefix(model, prefix_ids, inputs, logits_to_keep)
    return model(**inputs, use_cache=False, logits_to_keep=logits_to_keep)


def forward_with_shared_prefix(model, prefix_ids, inputs: dict[str, Any], logits_to_keep):
    """The model's output on the rows `inputs` (suffixes) as if each began with `prefix_ids`.

    `logits_to_keep` indexes suffix positions. The prefix runs once; its cache is repeated over the batch.
    """
    import torch

    input_ids, mask = inputs["input_ids"], inputs["attention_mask"]  # mask: [B, P + S]
    batch, width, prefix = input_ids.shape[0], input_ids.shape[1], prefix_ids.shape[1]
    head = model(input_ids=prefix_ids, use_cache=True, logits_to_keep=1)
    cache = head.past_key_values
    cache.batch_repeat_interleave(batch)
    positions = torch.arange(prefix, prefix + width, device=input_ids.device).unsqueeze(0).expand(batch, -1)
    return model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                 use_cache=True, logits_to_keep=logits_to_keep)
