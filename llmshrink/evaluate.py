"""Size of a loaded checkpoint (parameters, non-zeros, bytes) and the dtype it computes in."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llmshrink.models import dir_bytes


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
