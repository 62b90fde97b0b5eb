"""WANDA width pruning (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs").

Weight W_ij of a linear layer (output row i, input feature j) scores S_ij = |W_ij| · ‖X_j‖₂, with ‖X_j‖₂
the L2 norm of input feature j over all calibration tokens. Within each output row the lowest scores
are zeroed: N of every M consecutive inputs (N:M) or a share of the whole row (unstructured).
Decoder layers are pruned in order, and the calibration activations reaching a layer are those of
the already pruned layers before it, as in the reference implementation.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn
from tqdm import tqdm

from llmshrink import family
from llmshrink.family import layers as decoder_layers
from llmshrink.params import choice
from llmshrink.params.width import Wanda

LayerInput = tuple[torch.Tensor, dict[str, Any]]  # hidden states entering a decoder layer, its keyword arguments


def targets(model: nn.Module, s: Wanda) -> dict[str, nn.Linear]:
    """The linear modules to prune by name ("layers.3.mlp.down_proj"), after checking them against the model: the
    layers holding the projections `wanda.modules` (a fused one, e.g. Phi-3's qkv_proj, when all its projections
    are named; every row of it scores against the same inputs, so pruning it whole equals pruning its parts)."""
    layers = decoder_layers(model)
    modules = family.of(model).resolve("width_prune (wanda.modules)", s.modules)
    if s.seq_len > model.config.max_position_embeddings:
        raise ValueError(f"wanda.seq_len={s.seq_len} exceeds the model's {model.config.max_position_embeddings} positions")
    for i in s.dense_layers:
        choice("wanda.dense_layers", i, range(len(layers)))
    out = {}
    for i, layer in enumerate(layers):
        for sub, module in layer.named_modules():
            if i in s.dense_layers or sub.rsplit(".", 1)[-1] not in modules:
                continue
            if s.m and module.in_features % s.m:
                raise ValueError(f"wanda.pattern={s.name!r}: M={s.m} does not divide the row length "
                                 f"{module.in_features} of layers.{i}.{sub}")
            if not s.m and int(module.in_features * s.sparsity) == 0:
                raise ValueError(f"wanda.pattern={s.name!r} prunes no weight of a row of length {module.in_features} "
                                 f"(layers.{i}.{sub}); raise the share or set wanda.enabled=false")
            out[f"layers.{i}.{sub}"] = module
    if not out:
        raise ValueError(f"wanda.dense_layers={list(s.dense_layers)} leaves no layer to prune; set wanda.enabled=false")
    return out


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True for the `n` lowest scores of every `m` consecutive entries of each row."""
    rows, cols = score.shape
    groups = score.reshape(rows, cols // m, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, groups.topk(n, dim=2, largest=False).indices, True)
    return mask.reshape(rows, cols)


def row_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """True for the int(cols · sparsity) lowest scores of each row."""
    mask = torch.zeros_like(score, dtype=torch.bool)
    k = int(score.shape[1] * sparsity)
    mask.scatter_(1, score.topk(k, dim=1, largest=False).indices, True)
    return mask


def prune_linear(linear: nn.Linear, norms: torch.Tensor, s: Wanda) -> None:
    """Zero the lowest-scoring weights of `linear`, score |W_ij| · ‖X_j‖₂."""
    score = linear.weight.detach().abs().double() * norms.to(linear.weight.device)
    mask = nm_mask(score, s.n, s.m) if s.m else row_mask(score, s.sparsity)
    linear.weight.data[mask] = 0


class _Caught(Exception):
    """Raised by the hook on layer 0 once its inputs are captured."""


@torch.no_grad()
def layer0_inputs(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[LayerInput]:
    """Hidden states and keyword arguments (position embeddings, attention mask, ...) entering decoder layer 0,
    one pair per batch of token ids: the reference code's Catcher, as a pre-hook that stops the forward pass."""
    captured: list[LayerInput] = []

    def catch(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        kwargs = dict(kwargs)
        captured.append((args[0] if args else kwargs.pop("hidden_states"), kwargs))
        raise _Caught

    handle = decoder_layers(model)[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for ids in batches:
            try:
                model(ids.to(model.device), use_cache=False)
            except _Caught:
                pass
    finally:
        handle.remove()
    return captured


@torch.no_grad()
def input_norms(layer: nn.Module, linears: dict[str, nn.Linear], inputs: list[LayerInput]) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ of every input feature j of each linear module over all calibration tokens (float64, on the CPU)."""
    squares = {name: torch.zeros(lin.in_features, dtype=torch.float64) for name, lin in linears.items()}

    def hook(name: str):
        def add(_module: nn.Module, args: tuple, _out: torch.Tensor) -> None:
            x = args[0].reshape(-1, args[0].shape[-1])
            squares[name] += x.double().pow(2).sum(0).cpu()
        return add

    handles = [lin.register_forward_hook(hook(name)) for name, lin in linears.items()]
    try:
        for hidden, kwargs in inputs:
            layer(hidden, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return {name: sq.sqrt() for name, sq in squares.items()}


@torch.no_grad()
def prune(model: nn.Module, calib: torch.Tensor, s: Wanda, batch_size: int = 8) -> dict[str, nn.Linear]:
    """Prune `model` in place with calibration token ids `calib` [samples, seq_len]; returns the pruned modules.

    For each decoder layer: gather input norms of its modules in one pass, prune them all, then run the
    pruned layer to produce the next layer's inputs.
    """
    pruned = targets(model, s)
    inputs = layer0_inputs(model, calib.split(batch_size))
    for i, layer in enumerate(tqdm(decoder_layers(model), desc="wanda", leave=False)):
        linears = {name: lin for name, lin in pruned.items() if name.startswith(f"layers.{i}.")}
        if linears:
            norms = input_norms(layer, linears, inputs)
            for name, lin in linears.items():
                prune_linear(lin, norms[name], s)
        inputs = [(layer(hidden, **kwargs), kwargs) for hidden, kwargs in inputs]
    return pruned


def report(s: Wanda, modules: dict[str, nn.Linear]) -> dict[str, Any]:
    """Pattern, overall sparsity (zeros / weights over `modules`) and per-module sparsity."""
    zeros = {name: int((lin.weight == 0).sum()) for name, lin in modules.items()}
    sizes = {name: lin.weight.numel() for name, lin in modules.items()}
    return {
        "enabled": True,
        "pattern": s.name,
        "target": s.target,
        "sparsity": sum(zeros.values()) / sum(sizes.values()),
        "zeros": sum(zeros.values()),
        "weights": sum(sizes.values()),
        "modules": {name: zeros[name] / sizes[name] for name in modules},
    }
