"""The training stage: LoRA / QLoRA SFT of the student on the distilled dataset (optionally with logit KD).

`run(config, run_dir)` reads runs/<task>/data/dataset and writes runs/<task>/train/: adapter/ (peft, with
base_model.json), checkpoints/, loss.png, metrics.json and manifest.json. Rerun with the same command after
a crash (even kill -9) and it resumes from the last complete checkpoint; rerun after it finished and it is
skipped. The same code runs under `accelerate launch` (DDP / FSDP): transformers' Trainer does the rest.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit.core.dataset import dataset_fingerprint, load_dataset_dict
from kit.core.errors import UserError
from kit.core.files import atomic_write_json
from kit.core.run_dir import RunDir
from kit.core.stage import StageManifest, StagePlan, config_dict, fingerprint, run_stage, write_stage_manifest
from kit.models.base_model import BASE_MODEL_FILE, is_full_model, resolve_base
from runtime.memory import peak_rss_mb
from trainers.batching import SharedPrefixCollator
from trainers.checkpoints import claim, last_complete_checkpoint, read_initial_eval, write_initial_eval
from trainers.config import TrainConfig, TrainStageConfig
from trainers.data import KEEP, tokenized_splits
from trainers.distill import DistillCollator, check_same_tokenizer, with_teacher_topk
from trainers.figures import loss_curves, plot_loss, write_metrics
from trainers.model import (load_causal_lm, load_tokenizer, lora_config, resolve_device, resolve_precision,
                            set_cpu_threads)

STAGE = "train"


@dataclass(frozen=True)
class TrainPaths:
    folder: Path  # runs/<task>/train

    @property
    def adapter(self) -> Path:
        return self.folder / "adapter"

    @property
    def checkpoints(self) -> Path:
        return self.folder / "checkpoints"

    @property
    def teacher_cache(self) -> Path:
        return self.folder / "teacher_topk"

    @property
    def loss_png(self) -> Path:
        return self.folder / "loss.png"

    @property
    def metrics(self) -> Path:
        return self.folder / "metrics.json"


class TrainStage:
    """The train stage under the one stage contract (kit.core.stage)."""

    name = STAGE

    def folder(self, run_dir: RunDir) -> Path:
        return run_dir.train

    def plan(self, config: TrainStageConfig, run_dir: RunDir) -> StagePlan:
        data = load_dataset_dict(run_dir.dataset)
        base = resolve_base(config.student)
        teacher = _resolve_teacher(config.train)
        # threads change speed, not results: changing them neither retrains nor discards checkpoints
        record = {"student": config.student, "train": config_dict(config.train) | {"threads": None}}
        if config.replace_system_prompt:
            record["system_prompt"] = config.system_prompt
        inputs = {"dataset": dataset_fingerprint(run_dir.dataset), "base_model": base.sha256}
        if config.init_adapter is not None:
            start = Path(config.init_adapter)
            if not ((start / "adapter_config.json").is_file() or is_full_model(start)):
                raise UserError(f"no adapter to start from at {config.init_adapter}: train the previous round first")
            inputs["init_adapter"] = fingerprint(Path(config.init_adapter))
        if teacher is not None:
            inputs["teacher"] = teacher.sha256
        return StagePlan(record, inputs, {"data": data, "base": base, "teacher": teacher})

    def make(self, config: TrainStageConfig, run_dir: RunDir, plan: StagePlan, show_progress: bool = True) -> StageManifest:
        """Train (or resume from the last complete checkpoint) and write the adapter, figures and manifest."""
        from accelerate import PartialState  # lazy: accelerate pulls in torch

        processes = PartialState()
        train_config = config.train
        device = resolve_device(train_config)
        # the cores are shared by this machine's processes only (several machines: LOCAL_WORLD_SIZE per machine)
        local = int(os.environ.get("LOCAL_WORLD_SIZE") or processes.num_processes)
        threads = set_cpu_threads(local, train_config.threads) if device == "cpu" else None
        paths = TrainPaths(run_dir.train)
        base, teacher = plan.context["base"], plan.context["teacher"]
        system_prompt = config.system_prompt if config.replace_system_prompt else KEEP
        started = time.time()
        with processes.main_process_first():
            if processes.is_main_process:
                claim(paths.checkpoints, plan.manifest(STAGE).key)
        resume_from = last_complete_checkpoint(paths.checkpoints)
        trainer, progress = build_trainer(train_config, base, teacher, plan.context["data"], paths, device,
                                          show_progress, system_prompt, init_adapter=config.init_adapter)
        summary = _fit(trainer, paths, resume_from, keep_best=train_config.keep == "best")
        trainer.save_model(str(paths.adapter))
        if not processes.is_main_process:
            _leave_process_group(processes)
            return plan.manifest(STAGE)
        atomic_write_json(paths.adapter / BASE_MODEL_FILE, base.identity())
        metrics = _metrics(trainer, progress, summary, base, train_config, device, threads, processes.num_processes)
        metrics["machines"] = max(1, processes.num_processes // max(1, local))
        title = f"{config.student}: {train_config.method}" + (" + KD" if teacher else "")
        figures = _write_figures(trainer, metrics, paths, title)
        manifest = plan.manifest(STAGE, started=started, figures=figures,
                                 outputs={"adapter": "adapter", "adapter_config": "adapter/" + (
                                              "config.json" if train_config.method == "full" else "adapter_config.json"),
                                          "loss_png": "loss.png", "metrics": "metrics.json"})
        write_stage_manifest(paths.folder, manifest)
        _leave_process_group(processes)
        return manifest


def _leave_process_group(processes) -> None:
    """With several processes: once every rank is done, destroy the gloo / NCCL group before the interpreter exits
    (left to exit, its threads can abort a rank: "terminate called without an active exception")."""
    import torch.distributed as dist

    if processes.num_processes > 1 and dist.is_available() and dist.is_initialized():
        processes.wait_for_everyone()
        dist.destroy_process_group()


TRAIN = TrainStage()


def run(config: TrainStageConfig, run_dir: RunDir, *, show_progress: bool = True, force: bool = False) -> StageManifest:
    """The train stage: LoRA / QLoRA SFT of `config.student` on the run's dataset; skipped when up to date."""
    return run_stage(TRAIN, config, run_dir, force=force, show_progress=show_progress)


def train(config: TrainConfig, student: str, run_dir: RunDir, show_progress: bool = True, *,
          system_prompt: str | None | object = KEEP) -> StageManifest:
    """The train stage from a `train:` section and a student. `system_prompt` replaces the dataset's system
    message (None: train without one); by default the dataset's own is kept."""
    keep = system_prompt is KEEP
    stage_config = TrainStageConfig(student=student, train=config, replace_system_prompt=not keep,
                                    system_prompt=None if keep else system_prompt)
    return run(stage_config, run_dir, show_progress=show_progress)


def build_trainer(config: TrainConfig, base, teacher, data, paths: TrainPaths, device: str, show_progress: bool = True,
                  system_prompt: str | None | object = KEEP, init_adapter: Path | None = None):
    """The StudentTrainer (trl SFTTrainer + our loss) and its progress callback, ready to train; from
    `init_adapter`'s weights (trainable) when given, else from a new LoRA."""
    from accelerate import PartialState
    from transformers import PrinterCallback
    from transformers.trainer_callback import EarlyStoppingCallback
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from transformers import set_seed

    from trainers.callbacks import KeepBestWeights, SaveAfterEpochEvaluation, TrainProgress  # lazy: these import transformers / trl
    from trainers.trainer import StudentTrainer

    # trl wraps the model in its LoRA before transformers' Trainer seeds the run: seed first, or every run starts
    # from other random adapter weights (and a resumed build could not end as an uninterrupted one)
    set_seed(config.seed)
    tokenizer = load_tokenizer(base.hf_path)
    rows = tokenized_splits(tokenizer, data, config.max_seq_len, system_prompt, rationales=config.rationales)
    train_rows, collator = rows["train"], None
    if config.shared_prefix and not config.gradient_checkpointing:
        collator = SharedPrefixCollator(pad_token_id=tokenizer.pad_token_id, packing=config.packing)
    if teacher is not None:
        check_same_tokenizer(tokenizer, load_tokenizer(teacher.hf_path), teacher.spec)
        with PartialState().main_process_first():  # the main process fills the cache, the others read it
            train_rows = with_teacher_topk(train_rows, teacher, config.distill, paths.teacher_cache, device)
        collator = DistillCollator(collator or DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id,
                                                                               padding_free=config.packing))
    progress = TrainProgress(show=show_progress)
    keep_best = KeepBestWeights(keep_weights=config.keep == "best")  # keep: last tracks the best loss only
    callbacks: list[Any] = [progress, SaveAfterEpochEvaluation(), keep_best]
    if config.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    model, peft_config = _student_model(config, base, device, init_adapter)
    trainer = StudentTrainer(
        model=model, args=training_args(config, device, paths.checkpoints, own_collator=collator is not None),
        train_dataset=train_rows, eval_dataset=rows["validation"], processing_class=tokenizer,
        peft_config=peft_config, data_collator=collator, callbacks=callbacks, distill=config.distill)
    trainer.remove_callback(PrinterCallback)
    return trainer, progress


def _student_model(config: TrainConfig, base, device: str, init_adapter: Path | None):
    """The model to train and the LoRA config trl should wrap it in (None: already wrapped, or full fine-tuning)."""
    if config.method == "full":
        # every weight trains; a later round starts from the previous round's whole model
        start = str(init_adapter) if init_adapter is not None else base.hf_path
        return load_causal_lm(start, config, device), None
    model = load_causal_lm(base.hf_path, config, device)
    if init_adapter is None:
        return model, lora_config(config.lora)
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True), None


def training_args(config: TrainConfig, device: str, output_dir: Path, own_collator: bool = False):
    """SFTConfig from the recipe: checkpoints every N steps, validation each epoch, padding-free batches."""
    from trl import SFTConfig

    padding_free = config.packing and not own_collator  # the distillation collator flattens batches itself
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        use_cpu=device == "cpu",
        bf16=resolve_precision(config, device) == "bf16",
        fp16=False,
        # rows arrive tokenized and truncated to max_seq_len (trainers/data.py); batches are concatenated into
        # one row with per-example position ids when packing is on, so no token is padding
        max_length=None,
        packing=False,
        padding_free=padding_free,
        # padded and shared-prefix batches carry an attention mask over every real token (prefix included);
        # padding-free ones none, and every token of theirs is real
        include_num_input_tokens_seen="non_padding" if config.shared_prefix or not config.packing else "all",
        remove_unused_columns=False,
        eval_strategy="epoch",
        save_strategy="steps",
        save_steps=config.checkpoint_every,
        save_total_limit=2,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_strategy="steps",
        logging_steps=1,
        seed=config.seed,
        data_seed=config.seed,
        ddp_find_unused_parameters=False,
        dataloader_pin_memory=device == "cuda",
        report_to="none",
        disable_tqdm=True,
    )


def _resolve_teacher(config: TrainConfig):
    if not config.distill.enabled:
        return None
    if not config.distill.teacher:
        raise UserError("train.distill.enabled needs train.distill.teacher: a local HF model (or store name) "
                        "sharing the student's tokenizer")
    return resolve_base(config.distill.teacher)


def _fit(trainer, paths: TrainPaths, resume_from: Path | None, keep_best: bool) -> dict[str, Any]:
    from trainers.callbacks import KeepBestWeights  # lazy: imports transformers

    best = next(c for c in trainer.callback_handler.callbacks if isinstance(c, KeepBestWeights))
    best.load(resume_from)  # the best evaluation before the run stopped still counts
    initial = read_initial_eval(paths.checkpoints)
    if resume_from is None or initial is None:
        initial = trainer.evaluate()
        if trainer.is_world_process_zero():
            write_initial_eval(paths.checkpoints, initial)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    state = trainer.state
    evals = [e for e in state.log_history if "eval_loss" in e]
    final = evals[-1] if evals and evals[-1].get("step") == state.global_step else trainer.evaluate()
    best_step = state.global_step
    if keep_best and best.best_loss is not None and best.best_loss < final["eval_loss"] and best.restore(trainer.model):
        final, best_step = {"eval_loss": best.best_loss, "step": best.best_step}, best.best_step
    return {"initial": initial, "final": final, "best_step": best_step, "resumed_from_step": _step_of(resume_from)}


def _step_of(checkpoint: Path | None) -> int | None:
    return int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else None


def _metrics(trainer, progress, summary, base, config: TrainConfig, device: str, threads, processes: int) -> dict:
    state = trainer.state
    train_losses = [e["loss"] for e in state.log_history if "loss" in e]
    metrics = {
        "base_model": base.identity(),
        "method": config.method,
        "distill": config.distill.enabled,
        "device": device,
        "precision": resolve_precision(config, device),
        "threads_per_process": threads,
        "processes": processes,
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "epochs_done": state.epoch,
        "stopped_early": state.global_step < state.max_steps,
        "best_step": summary["best_step"],  # the adapter holds this step's weights (keep: best, lowest validation loss)
        "resumed_from_step": summary["resumed_from_step"],
        "validation_loss_before": summary["initial"].get("eval_loss"),
        "validation_loss_after": summary["final"].get("eval_loss"),
        "validation_loss_by_epoch": [{"epoch": e.get("epoch"), "step": e["step"], "loss": e["eval_loss"]}
                                     for e in state.log_history if "eval_loss" in e],
        "train_loss_last": train_losses[-1] if train_losses else None,
        "train_tokens_per_s": round(progress.tokens_per_second, 1),
        "train_tokens_this_session": progress.tokens,
        "train_tokens_total": state.num_input_tokens_seen,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "log_history": state.log_history,
    }
    if device == "cuda":
        import torch

        metrics["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / (1 << 20), 1)
    return metrics


def _write_figures(trainer, metrics: dict, paths: TrainPaths, title: str) -> dict[str, Any]:
    train_curve, validation_curve = loss_curves(trainer.state.log_history)
    if metrics["validation_loss_before"] is not None:
        validation_curve = [(0, metrics["validation_loss_before"]), *validation_curve]
    plot_loss(train_curve, validation_curve, paths.loss_png, title)
    write_metrics(metrics, paths.metrics)
    return {k: v for k, v in metrics.items() if k not in ("log_history", "validation_loss_by_epoch", "base_model")}
