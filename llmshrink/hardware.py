"""Where and in what dtype the pipeline computes: the one device and dtype policy of every stage."""
from __future__ import annotations

import functools
import math
import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def matmul_gflops(dtype: torch.dtype, size: int = 1024, reps: int = 3) -> float:
    """Measured CPU `torch.mm` throughput in GFLOP/s for square `size` matrices in `dtype` (best of `reps`)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


@functools.lru_cache(maxsize=None)
def fastest_cpu_dtype() -> str:
    """bfloat16 if this CPU multiplies bf16 matrices at least 10% faster than fp32 (measured), else float32:
    the AVX512-BF16 flag alone does not say so (seen: bf16 at 162 GFLOP/s against fp32 at 297 on such a CPU)."""
    return "bfloat16" if matmul_gflops(torch.bfloat16) > 1.1 * matmul_gflops(torch.float32) else "float32"


def resolve_dtype(name: str, dev: torch.device | None = None) -> str:
    """A dtype name; `auto` is bfloat16 on a GPU that has it, and on a CPU the faster of bfloat16 and float32."""
    if name != "auto":
        return name
    dev = dev or device()
    if dev.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return fastest_cpu_dtype()


def work_dtype(dev: torch.device | None = None) -> str:
    """The dtype the model-writing stages compute in: bfloat16 on a GPU that has it; float32 on CPUs, so that
    their outputs are the same on every CPU (bf16 support differs between machines)."""
    dev = dev or device()
    return "bfloat16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"


def autocast_dtype(dev: torch.device) -> torch.dtype | None:
    """The autocast dtype for training on `dev`: bfloat16 on a GPU that has it, else none (float32)."""
    return torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else None


def name(dev: torch.device) -> str:
    """The GPU's name, or `cpu`."""
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
