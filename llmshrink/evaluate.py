"""Evaluation: WikiText-style perplexity, model size and generation speed of a checkpoint."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from llmshrink.calib import tokenize
from llmshrink.params import choice, integer

DTYPES = ("auto", "float32", "bfloat16")
LM_EVAL = (False, True, "hub")


def windows(ids: torch.Tensor, seq_len: int, max_windows: int | None = None) -> list[torch.Tensor]:
    """Split 1-D token ids into non-overlapping windows of `seq_len` (the last may be shorter)."""
    out = [w for w in ids.split(seq_len) if len(w) > 1]
    return out[:max_windows] if max_windows else out


@torch.no_grad()
def nll_sum(model: torch.nn.Module, batch: torch.Tensor) -> tuple[float, int]:
    """Summed next-token negative log-likelihood and the number of predicted tokens of a [B, T] batch."""
    logits = model(batch.to(model.device)).logits[:, :-1].float()
    targets = batch[:, 1:].to(model.device)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum")
    return loss.item(), targets.numel()


def perplexity(model: torch.nn.Module, chunks: list[torch.Tensor], batch_size: int, progress: bool = True) -> tuple[float, int]:
    """Perplexity over token windows (each predicted token counted once) and the number of tokens scored."""
    total, count = 0.0, 0
    by_length: dict[int, list[torch.Tensor]] = {}
    for c in chunks:
        by_length.setdefault(len(c), []).append(c)
    batches = [torch.stack(group[i : i + batch_size]) for group in by_length.values() for i in range(0, len(group), batch_size)]
    for batch in tqdm(batches, desc="perplexity", disable=not progress, leave=False):
        nll, n = nll_sum(model, batch)
        total, count = total + nll, count + n
    return math.exp(total / count), count


def text_perplexity(model: torch.nn.Module, tokenizer: Any, text: str, seq_len: int, batch_size: int,
                    max_windows: int | None = None) -> dict[str, Any]:
    """`wikitext` metrics: perplexity of `text` in non-overlapping `seq_len` windows (capped at `max_windows`)."""
    chunks = windows(tokenize(tokenizer, text), seq_len, max_windows)
    ppl, tokens = perplexity(model, chunks, batch_size)
    return {"ppl": ppl, "tokens": tokens, "windows": len(chunks), "seq_len": seq_len}


def check_cap(name: str, value: Any) -> None:
    """A cap on windows or questions is null (no cap) or an integer >= 1."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name}={value!r} must be null or an integer >= 1")


def check_params(p: dict[str, Any]) -> dict[str, Any]:
    """Validate the `eval` params section before any heavy work; return it."""
    for name, low in (("seq_len", 2), ("batch_size", 1), ("max_new_tokens", 1),
                      ("speed_prompt_tokens", 1), ("speed_new_tokens", 1)):
        integer(f"eval.{name}", p[name], low)
    for name in ("max_windows", "limit"):
        check_cap(f"eval.{name}", p[name])
    choice("eval.chat_template", p["chat_template"], (False, True))
    choice("eval.dtype", p["dtype"], DTYPES)
    choice("eval.lm_eval", p["lm_eval"], LM_EVAL)
    return p


def cpu_has_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes bfloat16 natively (AMX-BF16 or AVX512-BF16 flags)."""
    try:
        flags = set(Path(cpuinfo).read_text().split())
    except OSError:
        return False
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(name: str, dev: torch.device) -> str:
    """`eval.dtype`: `auto` is bfloat16 where the GPU or CPU supports it natively, else float32."""
    if name != "auto":
        return name
    if dev.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_has_bf16() else "float32"


def load_for_eval(path: str | Path, dtype: str, dev: torch.device) -> torch.nn.Module:
    """A checkpoint ready for evaluation in `dtype`: GPTQ checkpoints (with any EoRA adapter) through
    `llmshrink.quantize.load_quantized`, dense ones through `llmshrink.models.load`, on `dev`."""
    from llmshrink import models
    from llmshrink.quantize import is_quantized, load_quantized

    if is_quantized(path):
        return load_quantized(path, dtype)
    return models.load(path, dtype).to(dev)


def model_dtype(model: torch.nn.Module) -> str:
    """The floating-point dtype the model computes in, e.g. `bfloat16`."""
    floats = (p.dtype for p in model.parameters() if p.is_floating_point())
    return str(next(floats, torch.float32)).removeprefix("torch.")


def _quantized_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """GPTQ linear layers: they keep packed `qweight` buffers instead of a `weight` parameter."""
    return [m for m in model.modules() if hasattr(m, "qweight") and hasattr(m, "in_features")]


@torch.no_grad()
def model_size(model: torch.nn.Module, path: str | Path) -> dict[str, int]:
    """Parameters in total and non-zero, checkpoint bytes on disk and the bytes of the weights in fp16.

    Every tensor counts once (tied weights too). A GPTQ linear layer counts its logical weight matrix
    (in_features x out_features, non-zeros from its dequantized weight), its bias and its EoRA factors
    (lora_A, lora_B, on the layer or its adapter); its packing buffers (qweight, qzeros, scales, g_idx)
    count only on disk.
    """
    from llmshrink.quantize import dir_bytes

    params = nonzero = 0
    seen: set[int] = set()
    tensors: list[torch.Tensor] = []
    for m in _quantized_modules(model):
        logical = m.in_features * m.out_features
        params += logical
        nonzero += int(torch.count_nonzero(m.dequantize_weight())) if hasattr(m, "dequantize_weight") else logical
        seen.update(id(t) for t in [*m.parameters(), *m.buffers()])
        owners = (m, getattr(m, "adapter", None))
        tensors += [getattr(m, "bias", None), *(getattr(o, n, None) for o in owners for n in ("lora_A", "lora_B"))]
    tensors += [p for p in model.parameters() if id(p) not in seen]
    for t in {id(t): t for t in tensors if isinstance(t, torch.Tensor)}.values():
        params, nonzero = params + t.numel(), nonzero + int(torch.count_nonzero(t))
    return {"params": params, "params_nonzero": nonzero, "disk_bytes": dir_bytes(path), "weight_bytes_fp16": 2 * params}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@torch.no_grad()
def _prefill_decode(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """Seconds for one forward over `prompt` and for `new_tokens` greedy steps with the KV cache."""
    dev = prompt.device
    _sync(dev)
    start = time.perf_counter()
    out = model(prompt, use_cache=True)
    _sync(dev)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = out.logits[:, -1:].argmax(-1)
        out = model(token, cache=out.cache, use_cache=True)
    _sync(dev)
    return prefill, time.perf_counter() - start


def speed(model: torch.nn.Module, prompt_tokens: int, new_tokens: int, seed: int = 0) -> dict[str, Any]:
    """Prefill and decode throughput (tokens/s, batch 1) on a fixed random prompt, after one warm-up run."""
    dev = model.device
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_tokens), generator=g).to(dev)
    _prefill_decode(model, prompt[:, : min(prompt_tokens, 16)], min(new_tokens, 2))
    prefill, decode = _prefill_decode(model, prompt, new_tokens)
    return {"prefill_tok_s": prompt_tokens / prefill, "decode_tok_s": new_tokens / decode,
            "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "device": dev.type}
