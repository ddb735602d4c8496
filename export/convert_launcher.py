"""Runs llama.cpp's own convert_hf_to_gguf.py in a child process; usage: launcher ROOT PRE -- converter args.

PRE ("-" for none) is the llama.cpp pre-tokenizer name written when the converter does not recognise the
tokenizer's pre-tokenizer hash (a custom BPE vocabulary, or a model newer than the converter). A
recognised pre-tokenizer is kept as the converter detected it. Nothing else of the converter changes.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    root, pre, separator, *converter_args = argv
    assert separator == "--", "usage: convert_launcher ROOT PRE -- converter args"
    here = str(Path(__file__).resolve().parent)  # export/ holds a gguf.py that must not shadow gguf-py
    sys.path[:] = [str(Path(root) / "gguf-py"), root, *(p for p in sys.path if Path(p or ".").resolve() != Path(here))]
    from conversion.base import TextModel, logger

    detect = TextModel.get_vocab_base_pre

    def pre_or_override(self, tokenizer) -> str:
        try:
            return detect(self, tokenizer)
        except NotImplementedError:
            if pre == "-":
                raise
            logger.warning(f"pre-tokenizer not recognised by hash; writing '{pre}' as microkit was told to")
            return pre

    TextModel.get_vocab_base_pre = pre_or_override
    sys.argv = [str(Path(root) / "convert_hf_to_gguf.py"), *converter_args]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
