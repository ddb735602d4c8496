"""microkit: recipe in, verified quantized micro-expert bundle out."""

__version__ = "0.1.0"
