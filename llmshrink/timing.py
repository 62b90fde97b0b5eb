"""Wall time and peak GPU memory of a stage, kept out of its DVC outputs (which must be pure functions of their
deps and params, so that a rerun reproduces them byte for byte): printed, and appended as one JSON line to the
file named by the environment variable `LLMSHRINK_TIMINGS` when it is set (the GPU benchmark collects them)."""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from typing import Iterator

import torch

from llmshrink import hardware


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc, 10 ms resolution), None elsewhere: at a stage's start,
    the time its imports and set-up took."""
    try:
        started = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        return round(float(open("/proc/uptime").read().split()[0]) - started, 2)
    except (OSError, ValueError, IndexError):
        return None


def _record(record: dict) -> None:
    if path := os.environ.get("LLMSHRINK_TIMINGS"):
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


@contextmanager
def part(name: str) -> Iterator[None]:
    """Time the block as one part of a stage (e.g. "evaluate/choice"): printed and recorded, peak memory untouched."""
    start = time.perf_counter()
    yield
    seconds = round(time.perf_counter() - start, 2)
    print(f"{name}: {seconds} s")
    _record({"stage": name, "seconds": seconds})


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block as stage `name`; the record also has the wall-clock start and end (`started_at`, `ended_at`,
    epoch seconds) and the process's age at the start (`startup_seconds`), so that a run's time outside the stage
    timers splits into process start-up and the time between stage processes (DVC)."""
    dev = hardware.device()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    startup, started_at, start = process_age(), time.time(), time.perf_counter()
    yield
    record = {"stage": name, "seconds": round(time.perf_counter() - start, 2), "started_at": round(started_at, 2),
              "ended_at": round(time.time(), 2), "startup_seconds": startup, "device": hardware.name(dev),
              "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
              "peak_gpu_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0}
    print(f"{name}: {record['seconds']} s" + (f", peak GPU {record['peak_gpu_bytes'] / 2**30:.2f} GiB" if record["peak_gpu_bytes"] else ""))
    _record(record)
