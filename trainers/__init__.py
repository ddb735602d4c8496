"""Train a small student on distilled data: LoRA / QLoRA SFT and logit distillation."""
