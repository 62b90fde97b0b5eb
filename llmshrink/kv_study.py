"""What each KV-cache configuration costs, side by side in one process: long-context perplexity with chunked
prefill (each chunk attending to the compressed cache of the ones before), cache and peak memory, and decode
speed; summarized against the baseline configuration with 95% intervals, and as a Markdown table."""
from __future__ import annotations

import ctypes
import ctypes.util
import time
from contextlib import contextmanager
from typing import Any, Iterator

import psutil
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from llmshrink import stats
from llmshrink.kv_cache import CacheConfig, cache_bytes
from llmshrink.kv_quant import build, stored_bytes

SCORE_ROWS = 128  # positions whose float32 log-softmax is computed at once


@contextmanager
def peak_memory(dev: torch.device) -> Iterator[dict[str, int]]:
    """Within the block, the most memory the process holds beyond what it held at its start, into the yielded
    dict's `bytes` at the end: on a GPU the allocator's peak; on a CPU the resident peak (the kernel's high-water
    mark, reset at the start, after freed heap memory is returned with `malloc_trim`)."""
    out = {"bytes": 0}
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        start = torch.cuda.memory_allocated(dev)
        yield out
        out["bytes"] = torch.cuda.max_memory_allocated(dev) - start
        return
    libc = ctypes.util.find_library("c")
    if libc:
        ctypes.CDLL(libc).malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:  # 5: reset the peak resident set size (VmHWM)
        f.write("5")
    start = psutil.Process().memory_info().rss
    yield out
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    out["bytes"] = int(hwm.split()[1]) * 1024 - start


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _nll(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> float:
    """Summed next-token NLL, the float32 log-softmax over `SCORE_ROWS` positions at a time."""
    return sum(F.cross_entropy(head(h).float(), t, reduction="sum").item()
               for h, t in zip(hidden.split(SCORE_ROWS), targets.split(SCORE_ROWS)))


@torch.no_grad()
def chunked_nll(model: PreTrainedModel, ids: torch.Tensor, cache: Cache, chunk: int) -> tuple[list[tuple[float, int]], int]:
    """Prefill `ids` (1-D) into `cache` in chunks of `chunk` tokens, each attending to the cache of the ones
    before; per chunk after the first (which reads no cache), its summed next-token NLL and token count; and
    the greedy next token after the whole window."""
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    items = []
    for start in range(0, len(ids), chunk):
        piece = ids[start : start + chunk]
        hidden = decoder(piece[None].to(model.device), cache=cache, use_cache=True).last_hidden_state[0]
        targets = ids[start + 1 : start + chunk + 1].to(model.device)
        if start:
            items.append((_nll(head, hidden[: len(targets)], targets), len(targets)))
    return items, int(head(hidden[-1:]).argmax(-1))


@torch.no_grad()
def decode_tok_s(model: PreTrainedModel, filled: dict[str, tuple[Cache, int]], steps: int) -> dict[str, float]:
    """Greedy decode tokens/s at batch 1 from each filled cache (name -> (cache, next token)), the caches taking
    turns step by step after one untimed step each, so that a change in the machine's load hits all alike."""
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    ids = {name: torch.tensor([[token]], device=model.device) for name, (_, token) in filled.items()}
    seconds = dict.fromkeys(filled, 0.0)
    for step in range(steps + 1):
        for name, (cache, _) in filled.items():
            _sync(model.device)
            start = time.perf_counter()
            ids[name] = head(decoder(ids[name], cache=cache, use_cache=True).last_hidden_state).argmax(-1)
            _sync(model.device)
            seconds[name] += (time.perf_counter() - start) if step else 0.0
    return {name: steps / s for name, s in seconds.items()}


def measure(model: PreTrainedModel, config: CacheConfig, windows: list[torch.Tensor],
            chunk: int) -> tuple[dict[str, Any], tuple[Cache, int]]:
    """One configuration at one context length: the per-chunk NLL over the windows, the cache bytes after the
    first and the peak memory of its prefill and scoring; and that filled cache with its next greedy token."""
    layers = model.config.get_text_config(decoder=True).num_hidden_layers
    items: list[tuple[float, int]] = []
    for i, window in enumerate(windows):
        with peak_memory(model.device) as peak:
            cache = build(config, layers)
            nll, token = chunked_nll(model, window, cache, chunk)
        items += nll
        if i == 0:
            record = {"cache_bytes": stored_bytes(cache), "peak_bytes": peak["bytes"]}
            first = cache, token
        del cache
    return {"nll": [n for n, _ in items], "tokens": [t for _, t in items], **record}, first


def study(model: PreTrainedModel, configs: dict[str, CacheConfig], texts: dict[int, list[torch.Tensor]], chunk: int,
          decode_tokens: int) -> dict[str, dict[str, Any]]:
    """Every configuration at every context length (`measure`), then decode tokens/s from their first windows'
    caches side by side (`decode_tok_s`), and at short context after one chunk of the first window; after an
    uncounted warm-up (kernels, thread pool and allocator would inflate the first configuration's peak and time)."""
    layers = model.config.get_text_config(decoder=True).num_hidden_layers
    first = next(iter(texts.values()))[0][:chunk]

    def one_chunk(config: CacheConfig) -> tuple[Cache, int]:
        cache = build(config, layers)
        return cache, chunked_nll(model, first, cache, chunk)[1]

    decode_tok_s(model, {"warm-up": one_chunk(next(iter(configs.values())))}, 2)
    raw: dict[str, dict[str, Any]] = {name: {"contexts": {}} for name in configs}
    for context, windows in texts.items():
        filled = {}
        for name, config in tqdm(configs.items(), desc=f"kv configs at {context} tokens"):
            raw[name]["contexts"][context], filled[name] = measure(model, config, windows, chunk)
        for name, speed in decode_tok_s(model, filled, decode_tokens).items():
            raw[name]["contexts"][context]["decode_tok_s"] = speed
        del filled
    short = decode_tok_s(model, {name: one_chunk(config) for name, config in configs.items()}, decode_tokens)
    for name, speed in short.items():
        raw[name]["short_decode_tok_s"] = speed
    return raw


def summarize(raw: dict[str, dict[str, Any]], configs: dict[str, CacheConfig], baseline: str,
              model_config: dict[str, Any], deploy_context: int, seed: int) -> dict[str, Any]:
    """Per configuration and context: perplexity with its 95% interval, the paired difference to `baseline` with
    its interval and whether it is significantly worse, cache bytes (measured, and by `cache_bytes`), peak bytes,
    decode tokens/s and ratios to the baseline; the longest context's perplexity, interval and cache bytes also
    at the configuration's top level, and its cache bytes at `deploy_context`."""
    ref = raw[baseline]
    out = {}
    for name, r in raw.items():
        per_context = {}
        for context, m in r["contexts"].items():
            b = ref["contexts"][context]
            diff, diff_ci = stats.paired_ppl_diff(m["nll"], b["nll"], m["tokens"], seed=seed)
            per_context[str(context)] = {
                "ppl": stats.ppl(m["nll"], m["tokens"]), "ci95": stats.ppl_ci(m["nll"], m["tokens"], seed=seed),
                "tokens": sum(m["tokens"]), "items": len(m["tokens"]),
                "delta_ppl": diff, "delta_ci95": diff_ci, "significantly_worse": diff_ci[0] > 0,
                "cache_bytes": m["cache_bytes"], "cache_bytes_formula": cache_bytes(configs[name], context, model_config),
                "cache_vs_baseline": m["cache_bytes"] / b["cache_bytes"],
                "peak_bytes": m["peak_bytes"], "decode_tok_s": m["decode_tok_s"],
                "decode_vs_baseline": m["decode_tok_s"] / b["decode_tok_s"]}
        longest = per_context[str(max(r["contexts"]))]
        out[name] = {"config": configs[name].spec(), "ppl": longest["ppl"], "ci95": longest["ci95"],
                     "cache_bytes": longest["cache_bytes"],
                     "deploy_cache_bytes": cache_bytes(configs[name], deploy_context, model_config),
                     "short_decode_tok_s": r["short_decode_tok_s"],
                     "short_decode_vs_baseline": r["short_decode_tok_s"] / ref["short_decode_tok_s"],
                     "contexts": per_context}
    return out


def markdown(summary: dict[str, Any], baseline: str) -> str:
    """The summary as one Markdown table: configuration x context length."""
    lines = [f"| config | context | PPL [95% CI] | Δ vs {baseline} [95% CI] | cache MB | peak MB | "
             f"decode tok/s vs {baseline} (long / short) | not worse than {baseline} |",
             "| --- | ---: | --- | --- | ---: | ---: | --- | --- |"]
    for name, s in summary.items():
        for context, m in s["contexts"].items():
            delta = "—" if name == baseline else \
                f"{m['delta_ppl']:+.3f} [{m['delta_ci95'][0]:+.3f}, {m['delta_ci95'][1]:+.3f}]"
            verdict = "—" if name == baseline else "no" if m["significantly_worse"] else "yes"
            lines.append(f"| {name} | {context} | {m['ppl']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}] | {delta} | "
                         f"{m['cache_bytes'] / 1e6:.2f} | {m['peak_bytes'] / 1e6:.0f} | "
                         f"{m['decode_vs_baseline']:.2f} / {s['short_decode_vs_baseline']:.2f} | {verdict} |")
    return "\n".join(lines) + "\n"
