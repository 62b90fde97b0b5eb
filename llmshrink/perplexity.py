"""Perplexity of a causal LM over token windows of a text: each predicted token counted once."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from llmshrink.calib import tokenize


def windows(ids: torch.Tensor, seq_len: int, max_windows: int | None = None) -> list[torch.Tensor]:
    """Split 1-D token ids into non-overlapping windows of `seq_len` (the last may be shorter)."""
    out = [w for w in ids.split(seq_len) if len(w) > 1]
    return out[:max_windows] if max_windows else out


@torch.no_grad()
def nll_sum(model: torch.nn.Module, batch: torch.Tensor) -> tuple[float, int]:
    """Summed next-token negative log-likelihood and the number of predicted tokens of a [B, T] batch."""
    logits = model(batch.to(model.device)).logits[:, :-1].float()
    targets = batch[:, 1:].to(model.device)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum")
    return loss.item(), targets.numel()


def perplexity(model: torch.nn.Module, chunks: list[torch.Tensor], batch_size: int, progress: bool = True) -> tuple[float, int]:
    """Perplexity over token windows (each predicted token counted once) and the number of tokens scored."""
    total, count = 0.0, 0
    by_length: dict[int, list[torch.Tensor]] = {}
    for c in chunks:
        by_length.setdefault(len(c), []).append(c)
    batches = [torch.stack(group[i : i + batch_size]) for group in by_length.values() for i in range(0, len(group), batch_size)]
    for batch in tqdm(batches, desc="perplexity", disable=not progress, leave=False):
        nll, n = nll_sum(model, batch)
        total, count = total + nll, count + n
    return math.exp(total / count), count


def text_perplexity(model: torch.nn.Module, tokenizer: Any, text: str, seq_len: int, batch_size: int,
                    max_windows: int | None = None) -> dict[str, Any]:
    """`wikitext` metrics: perplexity of `text` in non-overlapping `seq_len` windows (capped at `max_windows`)."""
    chunks = windows(tokenize(tokenizer, text), seq_len, max_windows)
    ppl, tokens = perplexity(model, chunks, batch_size)
    return {"ppl": ppl, "tokens": tokens, "windows": len(chunks), "seq_len": seq_len}
