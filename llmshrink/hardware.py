"""Where and in what dtype the pipeline computes: the one device and dtype policy of every stage."""
from __future__ import annotations

import fcntl
import functools
import importlib.metadata
import json
import math
import os
import platform
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GPU_LOCKS = "LLMSHRINK_GPU_LOCKS"  # env: a folder of per-GPU locks; set it to give each stage process one free GPU
_pinned: list[IO[str]] = []  # the held lock, released when the process exits


@functools.lru_cache(maxsize=None)
def gpu_count() -> int:
    """GPUs on this host (`nvidia-smi -L`, asked once per process), counted without initialising CUDA."""
    if not shutil.which("nvidia-smi"):
        return 0
    done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in done.stdout.splitlines()) if done.returncode == 0 else 0


def lock_folder(lock_dir: str | Path) -> Path:
    """`lock_dir`, created private (0700) if absent; refused unless it is this user's folder, not a symlink, that
    no one else can write (a shared /tmp path another user could create first, with links planted in it)."""
    path = Path(lock_dir)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise ValueError(f"{GPU_LOCKS}={str(lock_dir)!r} must be a folder of this user's that no one else can write "
                         "(not a symlink), e.g. $XDG_RUNTIME_DIR/llmshrink-gpus or ~/.cache/llmshrink/gpus")
    return path


def claim_gpu(lock_dir: str | Path, count: int, poll_s: float = 1.0) -> tuple[int, IO[str]]:
    """The first of `count` GPUs whose lock file in `lock_dir` (`lock_folder`) no other process holds, and the
    open lock file (an exclusive `flock`, released when it is closed or the process ends, crashed or not); waits
    while all are taken. A lock file is never truncated and never followed when it is a symlink."""
    folder = lock_folder(lock_dir)
    while True:
        for index in range(count):
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            handle = os.fdopen(os.open(folder / f"gpu{index}.lock", flags, 0o600), "r+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            return index, handle
        time.sleep(poll_s)


def pin_free_gpu() -> int | None:
    """With `LLMSHRINK_GPU_LOCKS` set, several GPUs and no `CUDA_VISIBLE_DEVICES`: claim a free GPU and make it
    this process's only one, so that `dvc queue start -j <GPUs>` puts each worker's stage on its own GPU.
    Must run before CUDA is initialised (`device()` does it first)."""
    lock_dir = os.environ.get(GPU_LOCKS)
    if _pinned or not lock_dir or "CUDA_VISIBLE_DEVICES" in os.environ or (count := gpu_count()) < 2:
        return None
    index, handle = claim_gpu(lock_dir, count)
    _pinned.append(handle)
    os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
    print(f"{GPU_LOCKS}: this stage runs on GPU {index} of {count}")
    return index


def device() -> torch.device:
    """The GPU when there is one (a free one of several under `LLMSHRINK_GPU_LOCKS`), else the CPU."""
    pin_free_gpu()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_map(weight_bytes: int, on: torch.device, headroom: float = 0.8) -> str | None:
    """"auto" (accelerate spreads the layers over the visible GPUs) when the weights exceed `headroom` of the
    free memory of the one GPU `on` and there are several GPUs; else None (the whole model on `on`)."""
    if on.type != "cuda" or torch.cuda.device_count() < 2:
        return None
    free, _ = torch.cuda.mem_get_info(on)
    return "auto" if weight_bytes > headroom * free else None


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


CPU_DTYPE = "LLMSHRINK_CPU_DTYPE"  # env: bfloat16 or float32, what `auto` means on this CPU (skips the measurement)


def cpu_identity() -> str:
    """This CPU as the dtype choice depends on it: model, relevant flags, cores and the torch version."""
    m = machine()
    return f"{m['cpu']} | {' '.join(m['cpu_flags'])} | {m['cpus']} cpus | torch {m['torch']}"


@functools.lru_cache(maxsize=None)
def fastest_cpu_dtype() -> str:
    """bfloat16 if this CPU multiplies bf16 matrices at least 10% faster than fp32, else float32: the AVX512-BF16
    flag alone does not say so (seen: bf16 at 162 GFLOP/s against fp32 at 297 on such a CPU). Measured once per
    CPU (`cpu_identity`) and kept in the cache folder (`cpu_dtype.json`), so that every stage and every later run
    on this machine computes in the same dtype whatever the load at the time; `LLMSHRINK_CPU_DTYPE` overrides."""
    from llmshrink.atomic import write_json
    from llmshrink.pypi import cache_dir

    if forced := os.environ.get(CPU_DTYPE):
        if forced not in ("bfloat16", "float32"):
            raise ValueError(f"{CPU_DTYPE}={forced!r}: allowed values are bfloat16, float32")
        return forced
    path, key = cache_dir() / "cpu_dtype.json", cpu_identity()
    with open(path.with_suffix(".lock"), "a") as lock:  # one measurement when several stages start at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        known = json.loads(path.read_text()) if path.exists() else {}
        if key not in known:
            bf16, fp32 = (matmul_gflops(t, reps=5) for t in (torch.bfloat16, torch.float32))
            known[key] = "bfloat16" if bf16 > 1.1 * fp32 else "float32"
            write_json(path, known)
    return known[key]


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


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU model and relevant flags, threads, GPU, torch version."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
               platform.processor())
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    return {
        "cpu": cpu,
        "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8"}),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


VERSIONED = ("torch", "transformers", "gptqmodel", "lm_eval", "gguf")  # libraries a measured number depends on


def versions() -> dict[str, str | None]:
    """The installed versions of `VERSIONED` (None where one is not installed)."""
    found: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def stamped(metrics: dict[str, Any]) -> dict[str, Any]:
    """`metrics` with what produced them: the machine (`machine()`) and the library versions (`versions()`)."""
    return {**metrics, "environment": {"hardware": machine(), "versions": versions()}}
