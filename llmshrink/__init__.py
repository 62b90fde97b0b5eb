"""Compression pipeline for LLaMA-family models: depth pruning, WANDA, LoRA, GPTQ, EoRA."""
