"""The train stage: LoRA / QLoRA SFT of a small student on the distilled dataset (trl's SFTTrainer with the
loss on answer tokens only), optional logit distillation from a cached teacher top-k, checkpoints that
survive kill -9, and loss curves. May import kit.core and kit.models (plus torch, transformers, peft, trl and
accelerate inside the functions that need them); never the distill, eval, recipe or CLI layers above."""
