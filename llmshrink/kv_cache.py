"""Run-time KV-cache compression: cache configurations, their storage in bytes, and what they cost in quality
(long-context perplexity with chunked prefill), memory and decode speed, side by side in one process.

A configuration (params `kv.configs.<name>`) has a `dtype`:
- `bf16`: keys and values stored in 16 bits (read back in the model's dtype); with `sinks` + `window` the cache
  keeps only the first `sinks` tokens (attention sinks) and the `window` most recent ones (StreamingLLM eviction,
  original positions: the keys were rotated before they were cached);
- `fp8`: transformers' own `Fp8QuantizedLayer` (float8 e4m3, one scale per tensor fixed by the first chunk);
- `int8` / `int4` / `int2`: KIVI-style integer codes (asymmetric min-max, float16 scale and minimum per group),
  keys grouped `keys: channel` (each channel over `group` consecutive tokens, KIVI) or `token` (each token over
  `group` consecutive channels), values likewise by `values`; the `residual` most recent tokens stay in 16 bits
  (with per-channel grouping up to `group - 1` more, until a group of tokens is complete).
The codes are packed into bytes and dequantized on every read (no fused kernel): the byte counts are real, the
transient full-precision copy of one layer's cache is in the peak memory. The tokens of the chunk being
processed attend to each other in full precision; everything before them is read from the compressed cache.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import psutil
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer, Fp8QuantizedLayer

from llmshrink import stats
from llmshrink.params import choice, integer
from llmshrink.params.kv import Kv

DTYPES = ("bf16", "fp8", "int8", "int4", "int2")
BITS = {"int8": 8, "int4": 4, "int2": 2}
AXES = ("channel", "token")
STORE = torch.bfloat16  # the 16-bit storage of unquantized keys and values
SCALE = torch.float16  # scale and minimum of a quantization group
QUANTIZED_KEYS = ("keys", "values", "group", "residual")
EVICTION_KEYS = ("sinks", "window")
SCORE_ROWS = 128  # positions whose float32 log-softmax is computed at once


@dataclass(frozen=True)
class CacheConfig:
    """One cache configuration (see the module docstring); `window` None keeps every token."""

    dtype: str = "bf16"
    keys: str = "channel"
    values: str = "token"
    group: int = 32
    residual: int = 128
    sinks: int = 0
    window: int | None = None

    def spec(self) -> dict[str, Any]:
        """The keys that apply to this dtype (and eviction), as in params."""
        keys = QUANTIZED_KEYS if self.bits else EVICTION_KEYS if self.window is not None else ()
        return {"dtype": self.dtype, **{k: getattr(self, k) for k in keys}}

    @property
    def bits(self) -> int | None:
        return BITS.get(self.dtype)

    @property
    def step(self) -> int:
        """Tokens quantized at once: a group of tokens when either tensor is grouped per channel, else 1."""
        return self.group if "channel" in (self.keys, self.values) else 1


def parse(name: str, spec: Any) -> CacheConfig:
    """`kv.configs.<name>` as a CacheConfig; ValueError naming the parameter for an unknown key, a value out of
    range or a key that does not apply to the dtype (grouping keys need an integer dtype, eviction bf16)."""
    where = f"kv.configs.{name}"
    allowed = ("dtype", *QUANTIZED_KEYS, *EVICTION_KEYS)
    if not isinstance(spec, dict):
        raise ValueError(f"{where}={spec!r} must be a mapping with keys among {list(allowed)}")
    unknown = sorted(map(str, set(spec) - set(allowed)))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]} is not a key; allowed {list(allowed)}")
    dtype = choice(f"{where}.dtype", spec.get("dtype", "bf16"), DTYPES)
    misplaced = [k for k in QUANTIZED_KEYS if k in spec and dtype not in BITS] + \
                [k for k in EVICTION_KEYS if k in spec and dtype != "bf16"]
    if misplaced:
        needs = "an integer dtype (int8, int4, int2)" if misplaced[0] in QUANTIZED_KEYS else "dtype bf16"
        raise ValueError(f"{where}.{misplaced[0]} applies only to {needs}, not to dtype {dtype}")
    config = CacheConfig(**spec)
    choice(f"{where}.keys", config.keys, AXES)
    choice(f"{where}.values", config.values, AXES)
    integer(f"{where}.group", config.group, 1)
    integer(f"{where}.residual", config.residual, 0)
    integer(f"{where}.sinks", config.sinks, 0)
    if config.window is not None:
        integer(f"{where}.window", config.window, 1)
    elif "sinks" in spec:
        raise ValueError(f"{where}.sinks needs {where}.window (the recent tokens kept besides the sinks)")
    return config


def geometry(config: dict[str, Any]) -> tuple[int, int, int]:
    """Decoder layers, key-value heads and head size of a model config (a checkpoint's config.json as a dict)."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return config["num_hidden_layers"], config.get("num_key_value_heads") or heads, head_dim


def configs(p: Kv, model_config: dict[str, Any]) -> dict[str, CacheConfig]:
    """Every configuration of `kv.configs`, checked against the model before any work: contexts within its
    positions and multiples of `kv.chunk`, a per-token group dividing its head size, packed codes filling whole
    bytes, and an eviction window (with its sinks) shorter than every context."""
    positions = model_config.get("max_position_embeddings") or math.inf
    for context in p.contexts:
        if context > positions:
            raise ValueError(f"kv.contexts={list(p.contexts)}: {context} exceeds the model's {positions} positions "
                             f"(max_position_embeddings); allowed multiples of kv.chunk={p.chunk} up to {positions}")
        if context % p.chunk or context < 2 * p.chunk:
            raise ValueError(f"kv.contexts={list(p.contexts)}: {context} is not a multiple of kv.chunk={p.chunk} "
                             "of at least two chunks (the first chunk reads no cache and is not scored)")
    if p.context is not None and p.context > positions:
        raise ValueError(f"kv.context={p.context} exceeds the model's {positions} positions; allowed 1 to {positions}")
    _, _, head_dim = geometry(model_config)
    out = {str(name): parse(str(name), spec) for name, spec in p.configs.items()}
    for name, c in out.items():
        where = f"kv.configs.{name}"
        if c.bits and head_dim % (8 // c.bits):
            raise ValueError(f"{where}.dtype={c.dtype}: the head size {head_dim} does not pack into bytes")
        if c.bits and "token" in (c.keys, c.values) and head_dim % c.group:
            divisors = [g for g in range(1, head_dim + 1) if head_dim % g == 0]
            raise ValueError(f"{where}.group={c.group} must divide the head size {head_dim} for per-token "
                             f"grouping; allowed {divisors}")
        if c.window is not None and c.sinks + c.window >= min(p.contexts):
            raise ValueError(f"{where}: sinks + window = {c.sinks + c.window} keeps the whole of kv.contexts="
                             f"{min(p.contexts)} tokens; allowed sinks + window < {min(p.contexts)}")
    return out


def _grouped(x: torch.Tensor, group: int, axis: str) -> torch.Tensor:
    """[B, H, T, D] viewed with each quantization group along one dimension: channel -> [B, H, T/g, g, D] (groups
    of tokens, dim -2), token -> [B, H, T, D/g, g] (groups of channels, dim -1)."""
    b, h, t, d = x.shape
    return x.reshape(b, h, t // group, group, d) if axis == "channel" else x.reshape(b, h, t, d // group, group)


def quantize(x: torch.Tensor, bits: int, group: int, axis: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric min-max quantization of [B, H, T, D] in groups of `group` along tokens (`axis` channel) or
    channels (`token`): the codes packed along D into uint8 [B, H, T, D * bits / 8], and float16 scale and minimum
    per group ([B, H, T/g, 1, D] or [B, H, T, D/g, 1])."""
    dim = -2 if axis == "channel" else -1
    g = _grouped(x.float(), group, axis)
    low = g.amin(dim, keepdim=True).to(SCALE)
    scale = ((g.amax(dim, keepdim=True) - low.float()) / (2**bits - 1)).to(SCALE)
    codes = ((g - low.float()) / scale.float().clamp_min(1e-8)).round_().clamp_(0, 2**bits - 1).to(torch.uint8)
    per = 8 // bits
    codes = codes.view(x.shape).view(*x.shape[:-1], x.shape[-1] // per, per)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=x.device)
    return (codes << shifts).sum(-1, dtype=torch.uint8), scale, low


def dequantize(packed: torch.Tensor, scale: torch.Tensor, low: torch.Tensor, bits: int, group: int, axis: str,
               dtype: torch.dtype) -> torch.Tensor:
    """The [B, H, T, D] tensor in `dtype` back from `quantize`'s codes, scale and minimum."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    codes = ((packed[..., None] >> shifts) & (2**bits - 1)).flatten(-2)
    x = _grouped(codes.float(), group, axis) * scale.float() + low.float()
    return x.view(codes.shape).to(dtype)


class CompressedLayer(DynamicLayer):
    """One decoder layer's cache under a `CacheConfig` of dtype bf16 or int*: a 16-bit part (`keys`, `values`:
    the residual window, or all tokens for bf16, less the evicted ones) and the quantized older tokens."""

    is_croppable = False

    def __init__(self, config: CacheConfig):
        super().__init__()
        self.config = config
        self.cumulative_length = 0
        self.quantized: dict[str, list[torch.Tensor]] = {}  # "keys" / "values" -> [packed, scale, low]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.keys = key_states.new_empty((*key_states.shape[:2], 0, key_states.shape[-1]), dtype=STORE)
        self.values = value_states.new_empty((*value_states.shape[:2], 0, value_states.shape[-1]), dtype=STORE)
        self.is_initialized = True

    def _read(self, which: str, dtype: torch.dtype) -> torch.Tensor:
        """The cached keys or values, oldest first, in `dtype`."""
        fresh = getattr(self, which).to(dtype)
        if which not in self.quantized:
            return fresh
        c = self.config
        old = dequantize(*self.quantized[which], c.bits, c.group, getattr(c, which), dtype)
        return torch.cat([old, fresh], dim=-2)

    def _quantize_oldest(self, tokens: int) -> None:
        """Move the `tokens` oldest 16-bit tokens into the quantized part."""
        c = self.config
        for which in ("keys", "values"):
            part = quantize(getattr(self, which)[:, :, :tokens], c.bits, c.group, getattr(c, which))
            old = self.quantized.get(which)
            self.quantized[which] = list(part) if old is None else [torch.cat([o, n], dim=2) for o, n in zip(old, part)]
            setattr(self, which, getattr(self, which)[:, :, tokens:].clone())  # a view would hold them all

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values the new tokens attend to (the cache read back, then the new ones as given), then
        the new ones stored: quantized once more than `residual` are in 16 bits, or evicted past the window."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys = torch.cat([self._read("keys", key_states.dtype), key_states], dim=-2)
        values = torch.cat([self._read("values", value_states.dtype), value_states], dim=-2)
        self.cumulative_length += key_states.shape[-2]
        self.keys = torch.cat([self.keys, key_states.to(STORE)], dim=-2)
        self.values = torch.cat([self.values, value_states.to(STORE)], dim=-2)
        c = self.config
        if c.bits and (tokens := (self.keys.shape[-2] - c.residual) // c.step * c.step) > 0:
            self._quantize_oldest(tokens)
        if c.window is not None and self.keys.shape[-2] > c.sinks + c.window:
            self.keys = torch.cat([self.keys[:, :, : c.sinks], self.keys[:, :, -c.window :]], dim=-2)
            self.values = torch.cat([self.values[:, :, : c.sinks], self.values[:, :, -c.window :]], dim=-2)
        return keys, values

    def stored_tokens(self) -> int:
        quantized = self.quantized["keys"][0].shape[-2] if "keys" in self.quantized else 0
        return quantized + (self.keys.shape[-2] if self.is_initialized else 0)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """The attended length and the position of the first attended token (after eviction the sinks count as
        the oldest of a contiguous run: every cached token precedes the new ones, so the causal mask is right)."""
        stored = self.stored_tokens()
        return stored + query_length, self.cumulative_length - stored

    def get_seq_length(self) -> int:
        return self.cumulative_length


def build(config: CacheConfig, layers: int) -> Cache:
    """An empty cache of `layers` decoder layers under `config`."""
    if config.dtype == "fp8":
        return Cache(layers=[Fp8QuantizedLayer() for _ in range(layers)])
    return Cache(layers=[CompressedLayer(config) for _ in range(layers)])


def stored_bytes(cache: Cache) -> int:
    """The bytes a filled cache holds: codes, scales, minima and 16-bit tokens (fp8: codes and scales)."""
    total = 0
    for layer in cache.layers:
        if isinstance(layer, Fp8QuantizedLayer):
            parts = [t for which in (layer._quantized_keys, layer._quantized_values) for t in which]
        else:
            parts = [layer.keys, layer.values, *(t for q in layer.quantized.values() for t in q)]
        total += sum(t.nbytes for t in parts)
    return total


def cache_bytes(config: CacheConfig, tokens: int, model_config: dict[str, Any]) -> int:
    """The bytes `config`'s cache holds after `tokens` tokens at batch 1 (what `stored_bytes` measures): per
    layer, keys and values of H heads x D channels per token, at 2 bytes (bf16, after eviction at most
    sinks + window tokens), 1 byte + a float32 scale per tensor (fp8), or bits / 8 per code + 4 bytes of scale
    and minimum per group of `group` codes for the quantized tokens, 2 bytes for the 16-bit rest."""
    layers, heads, head_dim = geometry(model_config)
    if config.dtype == "fp8":
        per_layer = 2 * (heads * head_dim * tokens + 4)
    elif config.bits is None:
        kept = tokens if config.window is None else min(tokens, config.sinks + config.window)
        per_layer = 2 * heads * head_dim * kept * 2
    else:
        quantized = max(tokens - config.residual, 0) // config.step * config.step
        codes = heads * head_dim * quantized
        per_layer = 2 * (codes * config.bits // 8 + codes // config.group * 4 + heads * head_dim * (tokens - quantized) * 2)
    return layers * per_layer


def deployment(p: Kv, model_configs: dict[str, dict[str, Any]]) -> tuple[dict[str, int], str]:
    """Per model (name -> config), the bytes of the `kv.deploy` cache at `kv.context` tokens (None: the model's
    maximum context), and what that is in words."""
    config = parse(p.deploy, p.configs[p.deploy])
    sizes = {name: cache_bytes(config, p.context or c["max_position_embeddings"], c) for name, c in model_configs.items()}
    context = f"{p.context:,} tokens" if p.context else "the model's maximum context"
    return sizes, f"the kv.deploy={p.deploy} cache at kv.context: {context}"


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
