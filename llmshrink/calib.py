"""Calibration batches: random token windows of a text, as the WANDA and GPTQ reference code draws them."""
from __future__ import annotations

from typing import Any

import torch


def tokenize(tokenizer: Any, text: str) -> torch.Tensor:
    """The whole text as one 1-D tensor of token ids (no special tokens)."""
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def token_windows(tokenizer: Any, text: str, n_samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """`n_samples` windows of `seq_len` consecutive tokens at random offsets, shape [n_samples, seq_len]."""
    ids = tokenize(tokenizer, text)
    if n_samples < 1 or seq_len < 2:
        raise ValueError(f"calibration needs samples >= 1 and seq_len >= 2, got {n_samples} and {seq_len}")
    if len(ids) <= seq_len:
        raise ValueError(f"calibration text has {len(ids)} tokens, fewer than seq_len={seq_len}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len, (n_samples,), generator=g)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])
