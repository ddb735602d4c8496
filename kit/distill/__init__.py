"""Distillation, the generate stage: a teacher writes inputs and answers (`teachers/`), the critic keeps what
passes real checks (`critic/`, with the sandbox for code), the append-only sample store keeps everything and
the kept samples become the HF dataset. May import kit.models, kit.core and runtime."""
