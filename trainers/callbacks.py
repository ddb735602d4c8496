"""Trainer callbacks: a progress bar with loss and train tokens/s, and the throughput it measures."""

from __future__ import annotations

import os
import time
from pathlib import Path

from transformers import TrainerCallback

from kit.core.progress import tqdm_options
from trainers.checkpoints import BEST_WEIGHTS


class TrainProgress(TrainerCallback):
    """tqdm bar over optimizer steps showing loss and train tokens/s; keeps this session's throughput.

    Tokens/s counts the input tokens the trainer saw (`num_input_tokens_seen`) over the time spent inside
    optimizer steps only, so evaluation and checkpoint saving do not dilute it.
    """

    def __init__(self, show: bool = True):
        self.show = show
        self.bar = None
        self.step_seconds = 0.0
        self.tokens = 0
        self._step_started = 0.0
        self._tokens_at_begin = 0  # tokens seen at the end of the previous step
        self._last_loss: float | None = None
        self.steps: list[tuple[int, float]] = []  # (tokens, seconds) of each optimizer step this session

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.step_seconds if self.step_seconds else 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        if self.show and state.is_local_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                            **tqdm_options())
        self._tokens_at_begin = state.num_input_tokens_seen

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        # the trainer counts a step's tokens as it fetches the batches, just before on_step_begin
        if self._step_started:
            seconds, tokens = time.perf_counter() - self._step_started, state.num_input_tokens_seen - self._tokens_at_begin
            self.steps.append((tokens, seconds))
            self.step_seconds += seconds
            self.tokens += tokens
            self._step_started = 0.0
        self._tokens_at_begin = state.num_input_tokens_seen
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self._last_loss = float(logs["loss"])
            if state.log_history:  # keep the figure beside the loss in the run's history
                state.log_history[-1]["train_tokens_per_s"] = round(self.tokens_per_second, 1)
        if "eval_loss" in logs and self.bar is not None:
            self.bar.write(f"epoch {logs.get('epoch', 0):.2f}: validation loss {logs['eval_loss']:.4f}")
        self._refresh()

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _refresh(self) -> None:
        if self.bar is not None:
            loss = f"{self._last_loss:.4f}" if self._last_loss is not None else "-"
            self.bar.set_postfix_str(f"loss {loss}, {self.tokens_per_second:,.0f} tok/s", refresh=False)


class SaveAfterEpochEvaluation(TrainerCallback):
    """A checkpoint due on an epoch's last step is written after that epoch's validation instead of before it.
    Written before it, the checkpoint lacks the epoch's validation loss (best weights, early stopping), and a run
    resumed from it skips that validation, whose loader draws from the random state: the resumed run's dropout
    then differs from an uninterrupted one's, and so do its weights. Written after it, a resumed run ends with
    the uninterrupted run's weights, bit for bit."""

    def __init__(self):
        self._deferred = False

    def on_step_end(self, args, state, control, **kwargs):
        ends_epoch = state.epoch is not None and float(state.epoch).is_integer()
        if control.should_save and ends_epoch and args.eval_strategy == "epoch":
            control.should_save, self._deferred = False, True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self._deferred:
            control.should_save, self._deferred = True, False


class KeepBestWeights(TrainerCallback):
    """The trainable (LoRA) weights of the evaluation with the lowest validation loss, kept in memory, so the
    adapter saved at the end is the best epoch's, not the last one's (transformers' load_best_model_at_end,
    without a checkpoint per evaluation). The evaluation before training counts: if training only made the
    validation loss worse, the untrained adapter is what is saved. With `keep_weights=False` (train.keep: last)
    only the best loss and its step are tracked: no copy of the weights in memory or in the checkpoints."""

    def __init__(self, keep_weights: bool = True):
        self.keep_weights = keep_weights
        self.best_loss: float | None = None
        self.best_step: int | None = None
        self._weights: dict | None = None

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is None or model is None or (self.best_loss is not None and loss >= self.best_loss):
            return
        self.best_loss, self.best_step = loss, state.global_step
        if self.keep_weights:
            self._weights = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    def on_save(self, args, state, control, **kwargs):
        """Each checkpoint carries the best weights so far (a resumed run still ends with the best epoch's); the
        file is written last, so a checkpoint without it is incomplete (trainers.checkpoints)."""
        import torch

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not state.is_world_process_zero or not folder.is_dir():
            return
        partial = folder / (BEST_WEIGHTS + ".partial")
        torch.save({"loss": self.best_loss, "step": self.best_step, "weights": self._weights}, partial)
        os.replace(partial, folder / BEST_WEIGHTS)

    def load(self, checkpoint: Path | None) -> None:
        """The best weights a checkpoint carries (none: nothing is known yet)."""
        import torch

        path = Path(checkpoint) / BEST_WEIGHTS if checkpoint is not None else None
        if path is None or not path.is_file():
            return
        saved = torch.load(path, map_location="cpu", weights_only=True)
        self.best_loss, self.best_step, self._weights = saved["loss"], saved["step"], saved["weights"]

    def restore(self, model) -> bool:
        """Put the best weights back; False when there is nothing to restore."""
        import torch

        if self._weights is None:
            return False
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self._weights:
                    p.copy_(self._weights[name])
        return True
