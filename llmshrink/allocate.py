"""A type for every matrix of a llama.cpp file under a byte budget: mixed precision by measured sensitivity.

Each matrix t can take any of the allowed block formats f; its cost is the file bytes of t in f, its damage the
Fisher-weighted squared rounding error (the second-order estimate of the loss increase used by SqueezeLLM, Kim et
al. 2023, and by mixed-precision searches such as HAWQ-V2 and ModelOpt's AutoQuantize):

    s(t, f) = 1/2 · Σ_ij F_ij (W_ij − Q_f(W)_ij)²,   F = mean over calibration windows of (∂ loss / ∂W)²

with Q_f llama.cpp's round-to-nearest on f's grid, weighted by the importance matrix (`gguf_gptq.BLOCK_RULES`).
The assignment then minimises Σ s under the budget greedily: every matrix starts at its largest format and the
move with the least damage per byte saved is taken until the file fits (options that are both larger and worse
than another are dropped first). File bytes are exact: a reference file's bytes plus each matrix's change, each
matrix's data padded to the file's alignment as GGUF stores it.
"""
from __future__ import annotations

from typing import Any

import torch
from tqdm import tqdm

from llmshrink.gguf_gptq import BLOCK, BLOCK_RULES, round_to_grid
from llmshrink.params import InputError

ALIGNMENT = 32  # gguf's GGUF_DEFAULT_ALIGNMENT, which llama-quantize writes with


def tensor_bytes(shape: tuple[int, int], fmt: str, alignment: int = ALIGNMENT) -> int:
    """Bytes of a [rows, cols] matrix in llama.cpp format `fmt` as a GGUF file stores it (padded to `alignment`)."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[fmt.upper()]]
    raw = shape[0] * shape[1] // block * size
    return -(-raw // alignment) * alignment


def round_to_nearest(w: torch.Tensor, importance: torch.Tensor, fmt: str) -> torch.Tensor:
    """`w` [rows, cols] rounded to the grid of `fmt`, every 32-column block at once, each block's scale from its
    rule with the columns' `importance` (llama.cpp's quantizer, without GPTQ's error feedback)."""
    rows, cols = w.shape
    blocks = w.float().reshape(-1, BLOCK)
    weight = importance.to(w.device, torch.float32).reshape(1, cols // BLOCK, BLOCK).expand(rows, -1, -1).reshape(-1, BLOCK)
    d, m, lo, hi = BLOCK_RULES[fmt](blocks, weight)
    codes = round_to_grid(blocks, d.unsqueeze(1), m.unsqueeze(1), lo, hi)
    return (codes * d.unsqueeze(1) + m.unsqueeze(1)).reshape(rows, cols)


def fisher(model: torch.nn.Module, windows: torch.Tensor, names: dict[str, str]) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of the weights of the modules in `names` (module name -> tensor name): the mean
    over the token `windows` [n, seq_len] of the squared gradient of each window's next-token loss."""
    modules = dict(model.named_modules())
    weights = {names[n]: modules[n].weight for n in names}
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    for w in weights.values():
        w.requires_grad_(True)
    sums = {t: torch.zeros_like(w, dtype=torch.float32) for t, w in weights.items()}
    try:
        for window in tqdm(windows, desc="Fisher"):
            ids = window.unsqueeze(0).to(model.device)
            model(ids, labels=ids, use_cache=False).loss.backward()
            for t, w in weights.items():
                sums[t] += w.grad.float().square()
                w.grad = None
    finally:
        for w in weights.values():
            w.requires_grad_(False)
        for p in frozen:
            p.requires_grad_(True)
    return {t: s / len(windows) for t, s in sums.items()}


def round_all(weights: dict[str, torch.Tensor], importance: dict[str, torch.Tensor], formats: list[str]
              ) -> dict[str, dict[str, torch.Tensor]]:
    """Tensor -> format -> the tensor rounded to the format's grid (`round_to_nearest`)."""
    return {t: {f: round_to_nearest(w, importance[t], f) for f in formats}
            for t, w in tqdm(weights.items(), desc="rounding")}


def sensitivities(weights: dict[str, torch.Tensor], fishers: dict[str, torch.Tensor],
                  rounded: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, float]]:
    """s(t, f) for every tensor t and format f of `rounded` (see the module's docstring)."""
    return {t: {f: 0.5 * float((fishers[t] * (weights[t].float() - q).square()).sum()) for f, q in rounded[t].items()}
            for t in weights}


def assign(options: dict[str, dict[str, tuple[int, float]]], budget: int) -> dict[str, str]:
    """Tensor -> format minimising the summed damage with the summed bytes at most `budget`, greedily; `options`
    maps each tensor to {format: (bytes, damage)}. Raises InputError when even the smallest formats do not fit."""
    kept = {t: {f: o for f, o in opts.items()
                if not any(b <= o[0] and d <= o[1] and (b, d) != o for b, d in opts.values())}
            for t, opts in options.items()}
    choice = {t: max(opts, key=lambda f: (opts[f][0], -opts[f][1])) for t, opts in kept.items()}
    total = sum(kept[t][f][0] for t, f in choice.items())
    while total > budget:
        moves = [((kept[t][g][1] - kept[t][f][1]) / (kept[t][f][0] - kept[t][g][0]), t, g)
                 for t, f in choice.items() for g in kept[t] if kept[t][g][0] < kept[t][f][0]]
        if not moves:
            smallest = sum(min(b for b, _ in opts.values()) for opts in options.values())
            raise InputError(f"the matrices need at least {smallest} bytes in the allowed formats; budget {budget}")
        _, t, g = min(moves)
        total -= kept[t][choice[t]][0] - kept[t][g][0]
        choice[t] = g
    return choice


def plan(weights: dict[str, torch.Tensor], damage: dict[str, dict[str, float]], formats: list[str],
         fixed_bytes: int, budget: int) -> tuple[dict[str, str], dict[str, Any]]:
    """The format (of `formats`) of each matrix in `weights` so that the file (`fixed_bytes` for everything else)
    fits in `budget` bytes, by its `damage`; with the predicted file bytes and damage."""
    options = {t: {f: (tensor_bytes(tuple(w.shape), f), damage[t][f]) for f in formats} for t, w in weights.items()}
    chosen = assign(options, budget - fixed_bytes)
    predicted = fixed_bytes + sum(options[t][f][0] for t, f in chosen.items())
    return chosen, {"budget_bytes": budget, "predicted_bytes": predicted,
                    "damage": sum(options[t][f][1] for t, f in chosen.items()),
                    "formats": {f: sum(1 for c in chosen.values() if c == f) for f in formats}}
