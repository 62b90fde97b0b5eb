"""KL divergence to the base model, per predicted token, on the out-of-domain perplexity text: the measure
llama.cpp reports for its quantizers (`llama-perplexity --kl-divergence`), far more sensitive than perplexity
for small weight changes.

The base's next-token distribution is computed once (the `reference` stage) and kept as its `top_k` most likely
tokens' log-probabilities per position, so no checkpoint needs the base beside it. KL(base ‖ checkpoint) is then
summed over those k tokens plus one bucket for the rest of the vocabulary (the base's remaining probability
against the checkpoint's remaining probability): a lower bound of the full KL that merges only the tail.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from llmshrink.perplexity import text_perplexity


def reference(model: torch.nn.Module, tokenizer: Any, text: str, seq_len: int, max_windows: int | None,
              top_k: int, batch_size: int) -> dict[str, torch.Tensor]:
    """The base's `top_k` log-probabilities and token ids at every predicted position of the windows the
    perplexity of `text` is computed on (the same pass and windows as `perplexity.text_perplexity`)."""
    tops: dict[int, Any] = {}
    r = text_perplexity(model, tokenizer, text, seq_len, batch_size, max_windows,
                        also=lambda i, log_probs: tops.__setitem__(i, log_probs.topk(top_k, dim=-1)))
    return {"logprobs": torch.stack([tops[i].values.cpu() for i in range(r["windows"])]),
            "indices": torch.stack([tops[i].indices.to(torch.int32).cpu() for i in range(r["windows"])]),
            "window_tokens": torch.tensor(r["window_tokens"], dtype=torch.int32)}


def serialize(ref: dict[str, torch.Tensor], text: str) -> bytes:
    """The reference as safetensors bytes, the name of its perplexity text in the metadata."""
    return save({k: v.contiguous() for k, v in ref.items()}, metadata={"text": text})


def load_reference(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The reference and the name of its text."""
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()["text"]


class WindowKL:
    """Per window of the reference, KL(base ‖ model) summed over its predicted positions (top-k plus the rest),
    filled in by `perplexity.window_nll(..., also=...)` from the log-probabilities of the perplexity pass."""

    def __init__(self, ref: dict[str, torch.Tensor]) -> None:
        self.ref, self.sums = ref, [0.0] * len(ref["window_tokens"])

    def __call__(self, i: int, log_probs: torch.Tensor) -> None:
        base, idx = self.ref["logprobs"][i], self.ref["indices"][i].long()
        ours = log_probs.gather(-1, idx.to(log_probs.device)).cpu()  # k of the vocabulary's columns leave the GPU
        rest_p = (1 - base.exp().sum(-1)).clamp_min(1e-12)
        rest_q = (1 - ours.exp().sum(-1)).clamp_min(1e-12)
        kl = (base.exp() * (base - ours)).sum(-1) + rest_p * (rest_p.log() - rest_q.log())
        self.sums[i] = float(kl.clamp_min(0).sum())
