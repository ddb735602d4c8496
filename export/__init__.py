"""Merge, convert and quantize the student (GGUF, ONNX), verify each export, write the bundle."""
