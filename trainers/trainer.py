"""trl's SFTTrainer with the loss computed on the answer positions only (plus the distillation term).

Imported lazily (it pulls in torch, transformers and trl). The training loop, optimizer, checkpoints,
resume, DDP/FSDP and logging are trl's / transformers'; only `compute_loss` is ours, because:
  * the LM head runs only on positions whose next token is trained (`logits_to_keep` with indices), not on
    the prompt, which is most of a short chat sample;
  * a prompt every row of the batch shares is run once for the batch (trainers/batching.py);
  * distillation adds alpha*CE + (1-alpha)*T^2*KL(teacher || student) on the teacher's cached top-k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from trl import SFTTrainer

from trainers.batching import forward_rows
from trainers.config import DistillSettings


def kd_loss_sum(student_logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_logprobs: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """Sum over positions of T^2 * KL(p_teacher || p_student) on the teacher's top-k tokens.

    student_logits: [N, V]; teacher_ids, teacher_logprobs: [N, k] (teacher log-probs at temperature T).
    The teacher's top-k mass is renormalized; the student's log-probs are over its full vocabulary, so the
    sum stays >= 0 and is 0 only when the student puts exactly the teacher's top-k distribution there.
    """
    teacher_log_p = teacher_logprobs.float().log_softmax(-1)
    student_log_q = (student_logits.float() / temperature).log_softmax(-1).gather(-1, teacher_ids.long())
    kl = (teacher_log_p.exp() * (teacher_log_p - student_log_q)).sum(-1)
    return kl.sum() * temperature ** 2


class StudentTrainer(SFTTrainer):
    def __init__(self, *args, distill: DistillSettings | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.distill = distill if distill is not None and distill.enabled else None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        teacher_ids = inputs.pop("teacher_ids", None)
        teacher_logprobs = inputs.pop("teacher_logprobs", None)
        targets = labels[:, 1:]
        trained = targets != -100
        keep = trained.any(0).nonzero().squeeze(-1)  # sequence positions with a trained next token
        outputs = forward_rows(model, inputs, keep)  # a prompt the rows share runs once (trainers/batching.py)
        kept = trained[:, keep]
        logits = outputs.logits[kept]  # [N, V], N = trained tokens in the batch, row-major
        answer = targets[:, keep][kept]
        loss_sum = F.cross_entropy(logits.float(), answer, reduction="sum")
        if self.distill is not None and teacher_ids is not None and self.model.training:
            kd = kd_loss_sum(logits, teacher_ids, teacher_logprobs, self.distill.temperature)
            loss_sum = self.distill.alpha * loss_sum + (1.0 - self.distill.alpha) * kd
        if num_items_in_batch is None:
            loss = loss_sum / answer.numel() if answer.numel() else loss_sum
        else:
            loss = loss_sum / torch.as_tensor(num_items_in_batch, device=loss_sum.device).clamp(min=1)
            if self.args.average_tokens_across_devices:
                # num_items_in_batch counts every rank's tokens and DDP averages gradients across ranks
                loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
