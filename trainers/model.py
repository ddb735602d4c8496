"""Load the student (and a teacher) for training: device, precision, threads, QLoRA, LoRA."""

from __future__ import annotations

import importlib.util
import os

from kit.core.errors import UserError
from trainers.config import LoraSettings, TrainConfig


def resolve_device(config: TrainConfig) -> str:
    import torch

    if config.device == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but torch sees no CUDA GPU: install a CUDA build of torch "
                        "or set train.device: cpu")
    if config.method == "qlora":
        if not torch.cuda.is_available() or config.device == "cpu":
            raise UserError("train.method 'qlora' needs a CUDA GPU (4-bit bitsandbytes); use method: lora on CPU")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise UserError("train.method 'qlora' needs bitsandbytes: `pip install bitsandbytes`, or use method: lora")
    if config.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return config.device


def resolve_precision(config: TrainConfig, device: str) -> str:
    """'bf16' or 'fp32' for this device: auto takes bf16 on CUDA, fp32 on CPU."""
    if config.precision != "auto":
        return config.precision
    return "bf16" if device == "cuda" else "fp32"


def set_cpu_threads(processes: int, threads: int | None = None) -> int:
    """Use `threads`, else give each local process an equal share of the cores this process may run on."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = threads or max(1, cores // max(1, processes))
    torch.set_num_threads(threads)
    return threads


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, config: TrainConfig, device: str):
    """Weights in bf16 or fp32 (`resolve_precision`; on CPU, full fine-tuning keeps fp32 weights and computes under
    bf16 autocast); 4-bit NF4 weights with bf16 compute for QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM

    bf16_weights = resolve_precision(config, device) == "bf16" and (device == "cuda" or config.method != "full")
    kwargs: dict = {"dtype": torch.bfloat16 if bf16_weights else torch.float32}
    if config.method == "qlora":
        from accelerate import PartialState
        from transformers import BitsAndBytesConfig

        kwargs["device_map"] = {"": PartialState().local_process_index}  # 4-bit weights are made on the GPU
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        raise UserError(f"cannot load base model from {path} ({err}): check student.model") from None


def load_teacher(path: str, device: str):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as err:
        raise UserError(f"cannot load teacher from {path} ({err}): check train.distill.teacher") from None
    return model.to(device).eval()


def lora_config(settings: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=settings.target_modules, task_type="CAUSAL_LM")
