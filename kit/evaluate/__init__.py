"""The eval stage: every target (base student, teacher, merged student, each GGUF and ONNX export) scored on
the hand-written eval set in its own worker process, the metrics, the report and the one-request serve check.
May import the stage packages below it (kit.distill's teachers and execution checks, trainers, export),
kit.models, kit.core and runtime."""
