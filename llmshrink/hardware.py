"""Where and in what dtype the pipeline computes: the one device and dtype policy of every stage."""
from __future__ import annotations

from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes bfloat16 natively (AMX-BF16 or AVX512-BF16 flags)."""
    try:
        flags = set(Path(cpuinfo).read_text().split())
    except OSError:
        return False
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def resolve_dtype(name: str, dev: torch.device | None = None) -> str:
    """A dtype name; `auto` is bfloat16 where the GPU or CPU computes it natively, else float32."""
    if name != "auto":
        return name
    dev = dev or device()
    if dev.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_has_bf16() else "float32"


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
