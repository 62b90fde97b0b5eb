"""Run-time KV-cache compression: the cache configurations (`kv.configs`), checked against the model, and the
bytes each holds. The compressed cache itself is llmshrink/kv_quant.py; what each configuration costs in quality
(long-context perplexity with chunked prefill), memory and decode speed, side by side in one process, is
llmshrink/kv_study.py.

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

import math
from dataclasses import dataclass
from typing import Any

from llmshrink.params import choice, integer
from llmshrink.params.kv import Kv

DTYPES = ("bf16", "fp8", "int8", "int4", "int2")
BITS = {"int8": 8, "int4": 4, "int2": 2}
AXES = ("channel", "token")
QUANTIZED_KEYS = ("keys", "values", "group", "residual")
EVICTION_KEYS = ("sinks", "window")


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
