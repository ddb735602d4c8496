"""Logit distillation: the teacher's top-k log-probs, computed once per dataset and cached on disk.

Why not trl's GKDTrainer (trl.experimental.gkd) or DistillationTrainer: both run the teacher forward on every
step (and, on-policy, generate with the student), so the teacher sits in memory beside the student for the
whole run and its forward is paid every epoch. A sparse top-k cache costs one teacher pass, lets the
teacher be unloaded before training, survives kill -9 + resume, and the student trainer only adds a KL term
to its loss (trainers/trainer.py: kd_loss_sum). The loss is alpha*CE + (1-alpha)*T^2*KL(teacher || student).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit.core.errors import UserError
from kit.core.files import atomic_output
from kit.core.progress import tqdm_options
from kit.models.base_model import BaseModel
from trainers.batching import SharedPrefixCollator, forward_rows
from trainers.config import DistillSettings
from trainers.model import load_teacher

TEACHER_COLUMNS = ("teacher_ids", "teacher_logprobs")


def check_same_tokenizer(student_tokenizer, teacher_tokenizer, teacher: str) -> None:
    if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise UserError(f"teacher '{teacher}' does not share the student's tokenizer, so its logits cannot be "
                        "matched token by token: pick a teacher from the student's family (e.g. "
                        "qwen2.5-coder-1.5b-instruct -> qwen2.5-coder-0.5b-instruct) or set train.distill.enabled: false")


def cache_key(teacher: BaseModel, settings: DistillSettings, rows_digest: str) -> str:
    wanted = {"teacher": teacher.sha256, "temperature": settings.temperature, "top_k": settings.top_k, "rows": rows_digest}
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]


def rows_digest(rows) -> str:
    """Content hash of tokenized rows (input_ids + labels)."""
    digest = hashlib.sha256()
    for ids, labels in zip(rows["input_ids"], rows["labels"]):
        digest.update(json.dumps([ids, labels]).encode())
    return digest.hexdigest()


def with_teacher_topk(rows, teacher: BaseModel, settings: DistillSettings, cache_root: Path, device: str):
    """`rows` plus the teacher's top-k ids and log-probs (at temperature T) at every trained position.

    Read from `cache_root/<key>` when there; otherwise computed with one teacher pass and saved there.
    """
    from datasets import load_from_disk

    key = cache_key(teacher, settings, rows_digest(rows))
    cached = cache_root / key
    if (cached / "dataset_info.json").is_file():
        return load_from_disk(str(cached))
    topk = _teacher_topk(rows, teacher, settings, device)
    columns = rows.add_column("teacher_ids", topk["teacher_ids"]).add_column("teacher_logprobs", topk["teacher_logprobs"])
    with atomic_output(cached) as partial:
        columns.save_to_disk(str(partial))
    return load_from_disk(str(cached))


def _teacher_topk(rows, teacher: BaseModel, settings: DistillSettings, device: str, batch_size: int = 8) -> dict[str, list]:
    """Top-k per trained position, rows in batches whose shared prompt runs once (trainers/batching.py)."""
    import torch
    from tqdm.auto import tqdm

    model = load_teacher(teacher.hf_path, device)
    collate = SharedPrefixCollator(pad_token_id=0, packing=False)  # padding is masked: any id does
    ids_out, logprobs_out = [], []
    with torch.inference_mode(), tqdm(total=len(rows), desc="teacher top-k", **tqdm_options()) as bar:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            batch = {k: v.to(device) for k, v in collate([{"input_ids": i, "labels": lab} for i, lab in
                                                          zip(chunk["input_ids"], chunk["labels"])]).items()}
            trained = batch["labels"][:, 1:] != -100
            keep = trained.any(0).nonzero().squeeze(-1)
            logits = forward_rows(model, {k: v for k, v in batch.items() if k != "labels"}, keep).logits
            kept = trained[:, keep]
            logprobs = (logits[kept].float() / settings.temperature).log_softmax(-1)  # [N, V], row-major
            top = logprobs.topk(min(settings.top_k, logprobs.size(-1)), dim=-1)
            for indices, values in zip(top.indices.split(kept.sum(1).tolist()), top.values.split(kept.sum(1).tolist())):
                ids_out.append(indices.int().tolist())
                logprobs_out.append(values.tolist())
            bar.update(len(chunk["input_ids"]))
    del model
    return {"teacher_ids": ids_out, "teacher_logprobs": logprobs_out}


@dataclass
class DistillCollator:
    """trl's language-modeling collator, plus the teacher columns flattened in trained-token order.

    The rows' trained positions, taken example by example in order, are exactly the row-major order of
    the batch's trained positions, whether the batch is padding-free (one row) or padded.
    """

    base: Any  # trl.trainer.sft_trainer.DataCollatorForLanguageModeling

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        has_teacher = all(c in examples[0] for c in TEACHER_COLUMNS)
        batch = self.base([{k: e[k] for k in ("input_ids", "labels")} for e in examples])
        if has_teacher:
            batch["teacher_ids"] = torch.tensor([p for e in examples for p in e["teacher_ids"]], dtype=torch.long)
            batch["teacher_logprobs"] = torch.tensor([p for e in examples for p in e["teacher_logprobs"]],
                                                     dtype=torch.float32)
        return batch
