"""Perplexity of a causal LM over non-overlapping token windows of a text, each predicted token counted once.

Protocols: `standard`, the one of the GPTQ and WANDA reference evaluations, tokenizes the whole text once with
the tokenizer's default special tokens (a BOS at the very start for LLaMA tokenizers), cuts it into windows of
exactly `seq_len` tokens and drops the short tail; `all_tokens` adds no special token and keeps the tail.
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from llmshrink import family
from llmshrink.models import quantized_modules
from llmshrink.params import choice

PROTOCOLS = ("standard", "all_tokens")


def token_ids(tokenizer: Any, text: str, protocol: str = "standard") -> torch.Tensor:
    """The whole text as one 1-D tensor of token ids, with the tokenizer's special tokens under `standard`."""
    choice("protocol", protocol, PROTOCOLS)
    ids = tokenizer(text, add_special_tokens=protocol == "standard")["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def windows(ids: torch.Tensor, seq_len: int, max_windows: int | None = None, protocol: str = "standard") -> list[torch.Tensor]:
    """Non-overlapping windows of `seq_len` tokens, the first `max_windows` of them; `standard` drops the short
    tail, `all_tokens` keeps it (if it predicts anything)."""
    if protocol == "standard":
        ids = ids[: len(ids) // seq_len * seq_len]
    out = [w for w in ids.split(seq_len) if len(w) > 1]
    return out[:max_windows] if max_windows else out


def _nll_sum(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of one window from its last hidden states, the log-softmax in float32."""
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


_compiled_nll_sum = torch.compile(_nll_sum)  # compiles at its first call


@contextmanager
def _scoring(model: torch.nn.Module) -> Iterator[Callable[..., torch.Tensor]]:
    """The loss of one window, for the block. On a GPU, for a model without quantized layers, every decoder layer
    and the head + loss run compiled (`torch.compile`: the elementwise work fused, the float32 logits never
    written), eager again after the block; elsewhere all eager. Same math, summed in another order."""
    layers = model.get_decoder().layers
    if model.device.type != "cuda" or quantized_modules(model):
        yield _nll_sum
        return
    for layer in layers:
        layer.compile()
    try:
        yield _compiled_nll_sum
    finally:
        for layer in layers:
            layer._compiled_call_impl = None


@torch.no_grad()
def window_nll(model: torch.nn.Module, chunks: list[torch.Tensor], batch_size: int, progress: bool = True,
               also: Callable[[int, torch.Tensor], float] | None = None) -> list[tuple[float, int]]:
    """Per window, in the given order: summed next-token NLL and number of predicted tokens. Windows of one
    length run through the decoder together; the output head and the float32 log-softmax then run one window at
    a time, so the [batch, length, vocabulary] logits never exist at once (twice as fast on a CPU, same math);
    the sums come back in one transfer at the end. `also(i, log_probs)`, if given, is called with each window's
    float32 log-probabilities [length - 1, vocabulary] (eager, for another measure from the same pass)."""
    decoder, head = model.get_decoder(), family.head(model)
    by_length: dict[int, list[int]] = {}
    for i, c in enumerate(chunks):
        by_length.setdefault(len(c), []).append(i)
    groups = [idx[i : i + batch_size] for idx in by_length.values() for i in range(0, len(idx), batch_size)]
    sums = torch.zeros(len(chunks), dtype=torch.float32, device=model.device)
    with _scoring(model) if also is None else nullcontext(_nll_sum) as nll_sum:
        for group in tqdm(groups, desc="perplexity", disable=not progress, leave=False):
            batch = torch.stack([chunks[i] for i in group]).to(model.device)
            hidden = decoder(batch, use_cache=False).last_hidden_state[:, :-1]
            for row, i in enumerate(group):
                if also is None:
                    sums[i] = nll_sum(head, hidden[row], batch[row, 1:])
                else:
                    log_probs = F.log_softmax(head(hidden[row]).float(), dim=-1)
                    sums[i] = -log_probs.gather(-1, batch[row, 1:, None]).sum()
                    also(i, log_probs)
    return [(nll, len(c) - 1) for nll, c in zip(sums.tolist(), chunks)]


def perplexity(model: torch.nn.Module, chunks: list[torch.Tensor], batch_size: int, progress: bool = True) -> tuple[float, int]:
    """Perplexity over token windows and the number of tokens scored."""
    per_window = window_nll(model, chunks, batch_size, progress)
    total, count = sum(n for n, _ in per_window), sum(t for _, t in per_window)
    return math.exp(total / count), count


def text_perplexity(model: torch.nn.Module, tokenizer: Any, text: str, seq_len: int, batch_size: int,
                    max_windows: int | None = None, protocol: str = "standard",
                    also: Callable[[int, torch.Tensor], float] | None = None) -> dict[str, Any]:
    """Perplexity of `text` in non-overlapping `seq_len` windows (the first `max_windows`) under `protocol`,
    with the per-window NLL and token counts (`window_nll`, `window_tokens`) for intervals; `also` as in
    `window_nll`."""
    chunks = windows(token_ids(tokenizer, text, protocol), seq_len, max_windows, protocol)
    if not chunks:
        raise ValueError(f"the text has fewer than seq_len={seq_len} tokens: no perplexity window")
    per_window = window_nll(model, chunks, batch_size, also=also)
    nll, tokens = [n for n, _ in per_window], [t for _, t in per_window]
    return {"ppl": math.exp(sum(nll) / sum(tokens)), "tokens": sum(tokens), "windows": len(chunks),
            "seq_len": seq_len, "protocol": protocol, "window_nll": nll, "window_tokens": tokens}
