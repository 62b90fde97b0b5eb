"""Structured width pruning: whole MLP channels and whole attention heads removed, so the matrices really shrink.

Importance comes from one forward pass of calibration windows through the unpruned model (as Minitron computes it,
Muralidharan et al. 2024), from the L2 norms over all tokens of four activations per decoder layer: X the MLP
input, Z = act(gate_proj X) * up_proj X the input of down_proj, X_a the attention input, Y the attention output
entering o_proj.
- `activation` (Minitron): MLP channel c scores ‖Z_c‖₂; query head h scores ‖Y_h‖₂ over its head_dim columns of Y.
- `wanda`: WANDA's |W_ij|·‖X_j‖₂ summed over every weight the unit owns: an MLP channel its row of gate_proj and
  up_proj and its column of down_proj; a query head its head_dim rows of q_proj and columns of o_proj.
A KV group (a key/value head and the query heads that read it) scores the sum over its query heads, plus under
`wanda` its rows of k_proj and v_proj. Every layer removes the same number of its own lowest-scoring MLP channels,
KV groups and query heads per kept group, so all layers keep one shape and the result is a plain config of the same
class (smaller `intermediate_size`, `num_attention_heads`, `num_key_value_heads`; `head_dim` written explicitly).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedModel

from llmshrink import family
from llmshrink.family import head_dim, layers as decoder_layers
from llmshrink.params.width import Structured

NORMED = {"x": "gate_proj", "z": "down_proj", "xa": "q_proj", "y": "o_proj"}  # activation -> projection it enters
STAGE = "width_prune (structured)"


def check_family(f: family.Family, s: Structured) -> None:
    """Refuse head pruning where q/k norms span all heads (OLMo 2): removing heads changes every kept head."""
    if f.qk_norm == "full" and (s.kv_groups or s.query_heads):
        raise family.Unsupported(f.model_type, STAGE, "its q_norm/k_norm normalise over all heads together, so "
                                 "removing heads changes the kept ones; set structured.kv_groups and "
                                 "structured.query_heads to 0 (MLP channels only)")


def shape(config: Any) -> dict[str, int]:
    """The widths structured pruning changes."""
    return {"intermediate_size": config.intermediate_size, "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads, "head_dim": head_dim(config)}


def counts(config: Any, s: Structured) -> dict[str, int]:
    """Units removed in every layer: MLP channels, KV groups, query heads per kept group; a ValueError naming the
    parameter when a share removes none or all of them, or keeps a head count that does not divide the width."""
    per_group = config.num_attention_heads // config.num_key_value_heads
    out = {}
    for key, name, total in (("mlp", "mlp_channels", config.intermediate_size),
                             ("kv_groups", "kv_groups", config.num_key_value_heads),
                             ("query_heads", "query_heads_per_group", per_group)):
        share = getattr(s, key)
        k = round(share * total)
        if share and not 0 < k < total:
            raise ValueError(f"structured.{key}={share!r} removes {k} of the {total} {name} of each layer; "
                             f"choose a share that removes between 1 and {total - 1} (or 0 for none)")
        out[name] = k
    heads = (config.num_key_value_heads - out["kv_groups"]) * (per_group - out["query_heads_per_group"])
    if config.hidden_size % heads:
        raise ValueError(f"structured.kv_groups={s.kv_groups!r} and structured.query_heads={s.query_heads!r} keep "
                         f"{heads} query heads, which do not divide hidden_size={config.hidden_size}: transformers' "
                         "config of this class refuses that even with head_dim set; choose shares that keep a divisor")
    return out


@torch.no_grad()
def activation_norms(model: PreTrainedModel, calib: torch.Tensor, batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
    """Per decoder layer, ‖·‖₂ over all calibration tokens of each feature of X, Z, X_a and Y (float64, CPU)."""
    f = family.of(model)
    squares: list[dict[str, torch.Tensor]] = [{} for _ in decoder_layers(model)]

    def hook(i: int, key: str):
        def add(_module: nn.Module, args: tuple) -> None:
            x = args[0].reshape(-1, args[0].shape[-1]).double().pow(2).sum(0).cpu()
            squares[i][key] = squares[i].get(key, 0) + x
        return add

    handles = [layer.get_submodule(f.module(projection)).register_forward_pre_hook(hook(i, key))
               for i, layer in enumerate(decoder_layers(model)) for key, projection in NORMED.items()]
    try:
        for ids in tqdm(calib.split(batch_size), desc="structured importance", leave=False):
            model(ids.to(model.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return [{k: v.sqrt() for k, v in layer.items()} for layer in squares]


def weights(layer: nn.Module, rows: dict[str, tuple[str, int, int]]) -> dict[str, torch.Tensor]:
    """|W| of each projection of one layer (its rows of a fused linear layer), float64 on the CPU, by short name
    ("q" for q_proj)."""
    return {p.removesuffix("_proj"): layer.get_submodule(path).weight.detach()[start:start + n].double().abs().cpu()
            for p, (path, start, n) in rows.items()}


def scores(layer: nn.Module, norms: dict[str, torch.Tensor], config: Any, importance: str,
           rows: dict[str, tuple[str, int, int]]) -> dict[str, torch.Tensor]:
    """Importance of each MLP channel [intermediate], query head [heads] and KV group [kv_heads] of one layer;
    `rows` locates each projection (`Family.rows`)."""
    d = head_dim(config)
    w = weights(layer, rows)
    if importance == "activation":
        channel = norms["z"]
        query = norms["y"].view(-1, d).pow(2).sum(1).sqrt()
        group = query.view(config.num_key_value_heads, -1).sum(1)
    else:
        channel = (w["gate"] * norms["x"]).sum(1) + (w["up"] * norms["x"]).sum(1) + w["down"].sum(0) * norms["z"]
        query = (w["q"] * norms["xa"]).sum(1).view(-1, d).sum(1) + (w["o"].sum(0) * norms["y"]).view(-1, d).sum(1)
        kv = ((w["k"] + w["v"]) * norms["xa"]).sum(1).view(-1, d).sum(1)
        group = query.view(config.num_key_value_heads, -1).sum(1) + kv
    return {"mlp": channel, "query": query, "group": group}


def keep(score: torch.Tensor, remove: int) -> torch.Tensor:
    """Indices of the len(score) - remove highest scores, in ascending order."""
    return score.topk(len(score) - remove).indices.sort().values


def kept_units(score: dict[str, torch.Tensor], removed: dict[str, int], per_group: int) -> dict[str, torch.Tensor]:
    """Kept MLP channels, KV groups and query heads (grouped by kept KV group, ascending) of one layer."""
    groups = keep(score["group"], removed["kv_groups"])
    query = score["query"].view(-1, per_group)
    heads = torch.cat([g * per_group + keep(query[g], removed["query_heads_per_group"]) for g in groups.tolist()])
    return {"mlp": keep(score["mlp"], removed["mlp_channels"]), "groups": groups, "heads": heads}


def rows(units: torch.Tensor, width: int) -> torch.Tensor:
    """Indices of the `width` consecutive rows (or columns) of each unit."""
    return (units[:, None] * width + torch.arange(width)).flatten()


def slice_layer(state: dict[str, torch.Tensor], prefix: str, kept: dict[str, torch.Tensor], d: int,
                rows_of: dict[str, tuple[str, int, int]]) -> None:
    """Cut one layer's tensors in `state` (in place) down to the kept channels and heads: the output rows (and
    bias) of the projections that produce them, fused ones part by part (`rows_of`, `Family.rows`), and the
    input columns of down_proj and o_proj."""
    units = {"gate_proj": kept["mlp"], "up_proj": kept["mlp"], "q_proj": rows(kept["heads"], d),
             "k_proj": rows(kept["groups"], d), "v_proj": rows(kept["groups"], d)}
    by_module: dict[str, list[torch.Tensor]] = {}
    for projection, idx in units.items():
        path, start, _ = rows_of[projection]
        by_module.setdefault(path, []).append(start + idx)
    for path, parts in by_module.items():
        idx = torch.cat(parts)
        for kind in ("weight", "bias"):
            if f"{prefix}{path}.{kind}" in state:
                state[f"{prefix}{path}.{kind}"] = state[f"{prefix}{path}.{kind}"][idx]
    for projection, idx in (("down_proj", kept["mlp"]), ("o_proj", rows(kept["heads"], d))):
        path = rows_of[projection][0]
        state[f"{prefix}{path}.weight"] = state[f"{prefix}{path}.weight"][:, idx]


@torch.no_grad()
def prune(model: PreTrainedModel, calib: torch.Tensor, s: Structured) -> tuple[PreTrainedModel, dict[str, Any]]:
    """A new model of the same class without the lowest-scoring units of every layer, and the report: units
    removed, the shapes before and after, parameter counts."""
    config, removed, f = model.config, counts(model.config, s), family.of(model)
    check_family(f, s)
    per_group, d, rows_of = config.num_attention_heads // config.num_key_value_heads, head_dim(config), f.rows(config)
    norms = activation_norms(model, calib)
    state = dict(model.state_dict())
    names = {id(layer): name for name, layer in model.named_modules()}
    for i, layer in enumerate(decoder_layers(model)):
        kept = kept_units(scores(layer, norms[i], config, s.importance, rows_of), removed, per_group)
        slice_layer(state, names[id(layer)] + ".", kept, d, rows_of)
    new_config = copy.deepcopy(config)
    new_config.intermediate_size = config.intermediate_size - removed["mlp_channels"]
    new_config.num_key_value_heads = config.num_key_value_heads - removed["kv_groups"]
    new_config.num_attention_heads = new_config.num_key_value_heads * (per_group - removed["query_heads_per_group"])
    new_config.head_dim = d
    pruned = type(model)(new_config).to(model.dtype)
    pruned.load_state_dict(state)
    pruned.generation_config = model.generation_config
    pruned.to(model.device).eval()
    report = {"enabled": True, "importance": s.importance, "shares": {"mlp": s.mlp, "kv_groups": s.kv_groups,
              "query_heads": s.query_heads}, "removed_per_layer": removed, "layers": len(decoder_layers(model)),
              "before": shape(config), "after": shape(new_config),
              "params_before": model.num_parameters(), "params_after": pruned.num_parameters()}
    return pruned, report
