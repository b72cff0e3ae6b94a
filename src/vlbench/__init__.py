"""vlbench: zero-shot conditioning of Z-Image-Turbo with Qwen3-VL hidden states."""

__version__ = "0.1.0"
