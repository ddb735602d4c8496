"""Models by name: the registry of store models, the offline store that assembles and verifies them, model
references (store name, GGUF, HF folder, hub id), the one base-model resolver, and the tokenizer rebuilt from
a GGUF's metadata. May import kit.core and runtime."""
