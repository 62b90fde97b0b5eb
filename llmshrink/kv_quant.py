"""The compressed KV cache of a `CacheConfig` (llmshrink/kv_cache.py) as transformers cache layers: KIVI-style
integer codes packed into bytes and dequantized on every read, 16-bit tokens with StreamingLLM eviction, or
transformers' own fp8 layer; and the bytes a filled cache holds."""
from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer, Fp8QuantizedLayer

from llmshrink.kv_cache import CacheConfig

STORE = torch.bfloat16  # the 16-bit storage of unquantized keys and values
SCALE = torch.float16  # scale and minimum of a quantization group


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
