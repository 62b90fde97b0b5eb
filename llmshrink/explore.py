"""Run-time layer skip / repeat ("Franken-LLaMA"): named layer orders applied to a loaded model, no checkpoints.

A configuration (params `explore.configs.<name>`) maps to the order in which the original decoder layers run:
- `keep`: `all` (default), `even` (0, 2, 4, ...), `odd` (1, 3, ...) or an explicit list of layers;
- `skip`: layers removed from that order;
- `repeat`: `{layer: count}`, the layer run `count` times in a row (count >= 1).
A layer is an index (negative counts from the end, -1 = last) or an anchor that scales with the layer count n:
`first`, `mid` (n // 2) or `last` (n - 1), with an optional offset, e.g. `mid-1`, `last-3`.
`{}` is the base model. The order is applied with `llmshrink.depth.layers_kept`, which gives every position
(a repeated layer included) its own `layer_idx`, hence its own KV-cache slot.
"""
from __future__ import annotations

import csv
import re
from typing import Any, Sequence

import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from llmshrink import qa
from llmshrink.atomic import atomic_file
from llmshrink.depth import layers_kept
from llmshrink.params import choice, integer
from llmshrink.params.evaluation import Eval
from llmshrink.params.explore import Explore
from llmshrink.perplexity import perplexity, token_ids, windows

KEYS = ("keep", "skip", "repeat")
KEEP = ("all", "even", "odd")
COLUMNS = ("config", "layers", "order", "ppl", "exact_match", "match", "open_exact_match")


def _index(name: str, value: Any, n_layers: int) -> int:
    """A layer in [0, n_layers - 1] from an index (negative from the end) or an anchor `first|mid|last[+-k]`."""
    given = value
    anchor = re.fullmatch(r"\s*(first|mid|last)\s*(?:([+-])\s*(\d+))?\s*", value) if isinstance(value, str) else None
    if anchor:
        offset = int(anchor[3] or 0) * (-1 if anchor[2] == "-" else 1)
        value = {"first": 0, "mid": n_layers // 2, "last": n_layers - 1}[anchor[1]] + offset
    elif isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    elif not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be a layer index or an anchor such as mid-1 or last-3")
    else:
        value = value + n_layers if value < 0 else value
    if not 0 <= value < n_layers:
        raise ValueError(f"{name}={given!r} is layer {value}, outside the model's layers [0, {n_layers - 1}]; use an anchor "
                         "(first, mid, last with an offset) so the configuration scales with the layer count")
    return value


def _indices(name: str, value: Any, n_layers: int) -> list[int]:
    if not isinstance(value, list):
        raise ValueError(f"{name}={value!r} must be a list of layer indices")
    return [_index(name, v, n_layers) for v in value]


def layer_order(name: str, spec: dict[str, Any] | None, n_layers: int) -> list[int]:
    """The original layer indices, in run order, of configuration `name`; ValueError naming
    `explore.configs.<name>` for unknown keys, out-of-range indices or repeat counts < 1."""
    where = f"explore.configs.{name}"
    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        raise ValueError(f"{where}={spec!r} must be a mapping with keys among {list(KEYS)}")
    unknown = sorted(map(str, set(spec) - set(KEYS)))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed {list(KEYS)}")
    keep = spec.get("keep", "all")
    if isinstance(keep, list):
        order = _indices(f"{where}.keep", keep, n_layers)
    else:
        choice(f"{where}.keep", keep, KEEP)
        order = [i for i in range(n_layers) if keep == "all" or i % 2 == (keep == "odd")]
    skip = set(_indices(f"{where}.skip", spec.get("skip", []), n_layers))
    repeat_spec = spec.get("repeat", {})
    if not isinstance(repeat_spec, dict):
        raise ValueError(f"{where}.repeat={repeat_spec!r} must be a mapping {{layer: count}}")
    repeat = {}
    for layer, count in repeat_spec.items():
        i = _index(f"{where}.repeat", layer, n_layers)
        repeat[i] = integer(f"{where}.repeat.{i}", count, 1)
    order = [i for i in order if i not in skip]
    dropped = sorted(set(repeat) - set(order))
    if dropped:
        raise ValueError(f"{where}.repeat: layer(s) {dropped} are skipped or not kept")
    order = [i for i in order for _ in range(repeat.get(i, 1))]
    if not order:
        raise ValueError(f"{where} keeps no layer")
    return order


def orders(p: Explore, n_layers: int) -> dict[str, list[int]]:
    """The layer order of every configuration of `explore.configs` for a model of `n_layers` layers."""
    return {str(name): layer_order(str(name), spec, n_layers) for name, spec in p.configs.items()}


def describe(order: Sequence[int]) -> str:
    """A compact order: ascending runs as `a-b`, a layer run k times in a row as `ixk`, e.g. `0-13,14x2,15-29`."""
    runs: list[list[int]] = []  # [layer, times]
    for i in order:
        if runs and runs[-1][0] == i:
            runs[-1][1] += 1
        else:
            runs.append([i, 1])
    parts: list[list[int]] = []  # [first, last] of ascending single runs, or [layer, -times]
    for i, times in runs:
        if times == 1 and parts and parts[-1][1] >= 0 and parts[-1][1] == i - 1:
            parts[-1][1] = i
        else:
            parts.append([i, i] if times == 1 else [i, -times])
    return ",".join(f"{a}x{-b}" if b < 0 else str(a) if a == b else f"{a}-{b}" for a, b in parts)


@torch.no_grad()
def sample(model: PreTrainedModel, tokenizer: Any, prompt: str, tokens: int) -> str:
    """The greedy continuation of `prompt`, `tokens` new tokens at most (with the KV cache)."""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(**ids, max_new_tokens=tokens, do_sample=False, pad_token_id=pad_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def score(model: PreTrainedModel, tokenizer: Any, order: list[int], chunks: list[torch.Tensor],
          records: list[dict[str, Any]], e: Eval, prompt: str, tokens: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """One configuration: perplexity on `chunks`, TriviaQA as the evaluate stage scores it (`eval` params `e`)
    and a greedy sample; returns the table row (without the name) and the sample record. No timings: the
    table is a pure function of its inputs (speed is measured side by side by the benchmark)."""
    with layers_kept(model, order):
        ppl = perplexity(model, chunks, e.batch_size, progress=False)[0]
        trivia = qa.triviaqa(model, tokenizer, records, e.max_new_tokens, e.batch_size, e.chat_template, e.limit)
        text = sample(model, tokenizer, prompt, tokens)
    row = {"layers": len(order), "order": describe(order), "ppl": ppl, "exact_match": trivia["exact_match"],
           "match": trivia["match"], "open_exact_match": trivia["open_exact_match"]}
    answers = [{"question": s["question"], "gold": s["answer"], "generated": s["generated"]} for s in trivia["samples"]]
    return row, {"order": row["order"], "sample": text, "triviaqa": answers}


def explore(model: PreTrainedModel, tokenizer: Any, orders: dict[str, list[int]], text: str,
            records: list[dict[str, Any]], e: Eval, prompt: str, tokens: int) -> tuple[list[dict], dict]:
    """Score every configuration on the same perplexity windows (`eval.seq_len`, capped at `eval.max_windows`)
    and questions; the table rows and `{"prompt": ..., "configs": {name: sample record}}`."""
    model.eval()
    chunks = windows(token_ids(tokenizer, text), e.seq_len, e.max_windows)
    rows, samples = [], {}
    for name, order in tqdm(orders.items(), desc="configs"):
        row, samples[name] = score(model, tokenizer, order, chunks, records, e, prompt, tokens)
        rows.append({"config": name, **row})
        tqdm.write(f"{name:>24}: {row['layers']:3d} layers, ppl {row['ppl']:9.3f}, "
                   f"EM {row['exact_match']:.3f} | {samples[name]['sample']!r}")
    return rows, {"prompt": prompt, "sample_tokens": tokens, "configs": samples}


def write_table(rows: list[dict[str, Any]], path: str) -> None:
    """The rows as CSV with the `COLUMNS` header, atomically."""
    with atomic_file(path) as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
