"""Depth pruning: score whole decoder layers, then remove the least important ones (Shortened-LLaMA, ShortGPT).

Score convention: for every criterion a HIGHER score means a MORE IMPORTANT layer.
- `ppl`: perplexity of the model with that one layer removed (Kim et al. 2024, "Shortened LLaMA", PPL criterion);
- `taylor`: sum over the layer's weights w of |w * dL/dw|, the first-order Taylor estimate of the loss change
  when each weight alone is zeroed, in absolute value so that opposite changes do not cancel (Shortened LLaMA,
  Taylor+, as its anal_block_sensitivity_taylor.py; "+" is the protect_first / protect_last rule);
- `magnitude`: sum of |w| over the layer's weights (Shortened LLaMA, magnitude baseline);
- `block_influence`: 1 - mean over tokens of cos(x_in, x_out) of the layer (Men et al. 2024, ShortGPT).
A layer's weights are, as in the reference, its weight matrices and its RMSNorm weight vectors (biases left out).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import PreTrainedModel

from llmshrink.perplexity import perplexity
from llmshrink.family import layers as decoder_layers, set_layers
from llmshrink.params import choice, integer

CRITERIA = ("ppl", "taylor", "magnitude", "block_influence")
PER_LAYER_CONFIG_LISTS = ("layer_types",)  # config lists with one entry per decoder layer


def keep_layers(model: PreTrainedModel, indices: Sequence[int]) -> PreTrainedModel:
    """Keep only the decoder layers `indices` (current positions, in the given order), in place.

    Each attention module's `layer_idx` becomes its new position (so the KV cache in `generate` works),
    `config.num_hidden_layers` and per-layer config lists follow. An index given twice gets a deep copy
    of the layer, so a repeated layer has its own cache slot. Returns `model`.
    """
    layers = decoder_layers(model)
    n = len(layers)
    bad = [i for i in indices if not 0 <= i < n]
    if bad or not indices:
        raise ValueError(f"layer indices must be a non-empty list in [0, {n - 1}], got {list(indices)}")
    seen: set[int] = set()
    kept = []
    for i in indices:
        kept.append(copy.deepcopy(layers[i]) if i in seen else layers[i])
        seen.add(i)
    for pos, layer in enumerate(kept):
        layer.self_attn.layer_idx = pos
    set_layers(model, kept)
    config = model.config
    for key in PER_LAYER_CONFIG_LISTS:
        values = getattr(config, key, None)
        if values is not None:
            setattr(config, key, [values[i] for i in indices])
    config.num_hidden_layers = len(kept)
    return model


@contextmanager
def layers_kept(model: PreTrainedModel, indices: Sequence[int]) -> Iterator[PreTrainedModel]:
    """Run the model with only `indices` kept (as `keep_layers`), restoring every layer and the config on exit."""
    layers = decoder_layers(model)
    layer_idx = [layer.self_attn.layer_idx for layer in layers]
    saved = {k: getattr(model.config, k, None) for k in ("num_hidden_layers", *PER_LAYER_CONFIG_LISTS)}
    try:
        yield keep_layers(model, indices)
    finally:
        set_layers(model, layers)
        for layer, idx in zip(layers, layer_idx):
            layer.self_attn.layer_idx = idx
        for key, value in saved.items():
            if value is not None:
                setattr(model.config, key, value)


def _weights(layer: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The weights of a decoder layer: its weight matrices and RMSNorm weights (biases left out, as the reference)."""
    return [p for name, p in layer.named_parameters() if name.endswith("weight")]


def score_ppl(model: PreTrainedModel, windows: torch.Tensor, batch_size: int) -> list[float]:
    """Perplexity on `windows` with each single layer removed."""
    n = len(decoder_layers(model))
    scores = []
    for i in tqdm(range(n), desc="ppl without layer"):
        with layers_kept(model, [j for j in range(n) if j != i]):
            scores.append(perplexity(model, list(windows), batch_size, progress=False)[0])
    return scores


def score_taylor(model: PreTrainedModel, windows: torch.Tensor, batch_size: int) -> list[float]:
    """sum |w * dL/dw| over each layer's weights, L the mean next-token loss over all calibration tokens."""
    model.zero_grad(set_to_none=True)
    total = windows.numel() - windows.size(0)
    for batch in tqdm(windows.split(batch_size), desc="taylor gradients"):
        batch = batch.to(model.device)
        logits = model(batch, use_cache=False).logits[:, :-1].float()
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum")
        (loss / total).backward()
    with torch.no_grad():
        scores = [sum((w * w.grad).float().abs().sum().item() for w in _weights(layer)) for layer in decoder_layers(model)]
    model.zero_grad(set_to_none=True)
    return scores


@torch.no_grad()
def score_magnitude(model: PreTrainedModel, windows: torch.Tensor, batch_size: int) -> list[float]:
    """L1 norm of each layer's weights (needs no data)."""
    return [sum(w.float().abs().sum().item() for w in _weights(layer)) for layer in decoder_layers(model)]


@torch.no_grad()
def score_block_influence(model: PreTrainedModel, windows: torch.Tensor, batch_size: int) -> list[float]:
    """1 - mean cosine similarity between each layer's input and output hidden state, over all tokens."""
    layers = decoder_layers(model)
    cos_sum = torch.zeros(len(layers), dtype=torch.float64)

    def hook(i: int) -> Callable:
        def record(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = output[0] if isinstance(output, tuple) else output
            cos_sum[i] += F.cosine_similarity(x_in.float(), x_out.float(), dim=-1).sum().double().cpu()
        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for batch in tqdm(windows.split(batch_size), desc="block influence"):
            model(batch.to(model.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return (1 - cos_sum / windows.numel()).tolist()


SCORERS = {"ppl": score_ppl, "taylor": score_taylor, "magnitude": score_magnitude, "block_influence": score_block_influence}


def score_layers(model: PreTrainedModel, windows: torch.Tensor, criterion: str, batch_size: int = 4) -> list[dict[str, Any]]:
    """`[{"layer": i, "score": s}, ...]` for every decoder layer; higher score = more important."""
    choice("prune.criterion", criterion, CRITERIA)
    model.eval()
    scores = SCORERS[criterion](model, windows, batch_size)
    return [{"layer": i, "score": float(s)} for i, s in enumerate(scores)]


def check_prune_params(n_layers: int, layers: int, protect_first: int, protect_last: int) -> None:
    """Raise a ValueError naming the parameter unless the request fits the unprotected range."""
    integer("prune.protect_first", protect_first, 0, n_layers)
    integer("prune.protect_last", protect_last, 0, n_layers)
    if protect_first + protect_last > n_layers:
        raise ValueError(f"prune.protect_first={protect_first} + prune.protect_last={protect_last} protect more than "
                         f"the model's {n_layers} layers; together they may protect at most {n_layers}")
    integer("prune.layers", layers, 0, n_layers - protect_first - protect_last)


def layers_to_remove(scores: list[dict[str, Any]], layers: int, protect_first: int, protect_last: int) -> list[int]:
    """The `layers` lowest-scoring layers outside the first `protect_first` and last `protect_last`, sorted."""
    n = len(scores)
    check_prune_params(n, layers, protect_first, protect_last)
    if sorted(s["layer"] for s in scores) != list(range(n)):
        raise ValueError(f"layer scores must cover layers 0..{n - 1} once each")
    candidates = [s for s in scores if protect_first <= s["layer"] < n - protect_last]
    ranked = sorted(candidates, key=lambda s: (s["score"], s["layer"]))
    return sorted(s["layer"] for s in ranked[:layers])


def n_params(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def prune(model: PreTrainedModel, removed: Sequence[int]) -> dict[str, Any]:
    """Remove the decoder layers `removed` (original indices) in place; returns the record for metrics/depth.json."""
    n = len(decoder_layers(model))
    kept = [i for i in range(n) if i not in set(removed)]
    before = n_params(model)
    keep_layers(model, kept)
    return {
        "removed": sorted(removed),
        "kept": kept,
        "layers_before": n,
        "layers_after": len(kept),
        "params_before": before,
        "params_after": n_params(model),
    }
