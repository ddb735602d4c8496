"""The embeddable runtime: loads a bundle and serves the expert.

Imports only llama_cpp, onnxruntime, tokenizers and numpy (lazily) — never torch or transformers.
"""
