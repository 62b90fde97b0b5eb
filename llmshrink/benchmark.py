"""Speed side by side: every checkpoint loaded in one process and timed in interleaved rounds on the same prompts.

A time is only meaningful next to another measured on the same machine at the same time, so each round times
every checkpoint once (prefill of the prompt, then greedy decode with the KV cache, at each batch size), and the
result is the median over rounds with its spread (min, max) and its ratio to the base checkpoint.
"""
from __future__ import annotations

import datetime
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import torch
from tqdm import tqdm

from llmshrink import hardware, int4, models


PROVENANCE = ("commit", "hardware", "command", "date", "versions")  # the keys provenance() returns


def provenance() -> dict[str, Any]:
    """Where a benchmark result comes from, for the top of its result file (`{**provenance(), ...}`): the commit
    (`git rev-parse HEAD` of this checkout, "-dirty" when tracked files differ from it), the machine (`hardware.machine()`,
    as `hardware`), the command line, the UTC date, and the versions of `hardware.VERSIONED`."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown (not a git checkout)"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    script = Path(sys.argv[0])
    if script.is_absolute() and script.is_relative_to(root):
        script = script.relative_to(root)
    return {
        "commit": commit,
        "hardware": hardware.machine(),
        "command": shlex.join(["python", str(script), *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": hardware.versions(),
    }


def sync(dev: torch.device) -> None:
    """Wait for the work queued on `dev` (a GPU); a no-op on a CPU."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@torch.no_grad()
def prefill_decode(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """Seconds for one forward pass over `prompt` [B, T] and for `new_tokens` greedy steps with the KV cache."""
    dev = prompt.device
    sync(dev)
    start = time.perf_counter()
    out = model(prompt, use_cache=True)
    sync(dev)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = out.logits[:, -1:].argmax(-1)
        out = model(token, past_key_values=out.past_key_values, use_cache=True)
    sync(dev)
    return prefill, time.perf_counter() - start


@torch.no_grad()
def compiled_decode_tok_s(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, rounds: int = 3) -> float:
    """Greedy decode tokens/s at batch 1 the way a deployment runs it on a GPU (gpt-fast, vLLM): a static KV
    cache and the one-token forward compiled once into CUDA graphs (`torch.compile(mode="reduce-overhead")`),
    the next token and its position kept on the device (a position made on the host each step would make the
    host wait for the GPU every token), and a 4-bit model's projections of one input fused (`int4.fuse`, in place);
    the median of `rounds` after warm-up (compile and capture)."""
    from transformers import StaticCache

    int4.fuse(model)
    dev, length = prompt.device, prompt.shape[1]
    cache = StaticCache(config=model.config, max_cache_len=length + new_tokens)
    step = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)

    def run() -> float:
        cache.reset()
        logits = model(prompt, past_key_values=cache, cache_position=torch.arange(length, device=dev)).logits
        token = logits[:, -1:].argmax(-1)
        sync(dev)
        start = time.perf_counter()
        position = torch.tensor([length], device=dev)
        for _ in range(new_tokens):  # nothing here waits for the GPU: the host queues the next step meanwhile
            token = step(token, past_key_values=cache, cache_position=position).logits[:, -1:].argmax(-1)
            position += 1
        sync(dev)
        return new_tokens / (time.perf_counter() - start)

    for _ in range(2):
        run()
    return statistics.median(run() for _ in range(rounds))


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(paths: dict[str, str | Path], dtype: str, rounds: int, prompt_tokens: int, new_tokens: int,
        batch_sizes: list[int], seed: int = 0) -> dict[str, Any]:
    """Load every checkpoint of `paths` (name -> folder; the first is the baseline), then time them in `rounds`
    interleaved rounds after one warm-up each. Returns `{"machine", "settings", "checkpoints": {name: {...}}}`
    with tokens/s medians and spreads per batch size, ratios to the baseline, and peak memory: the most the GPU
    allocated during its rounds, or on a CPU the resident bytes its loading added to the process. The settings
    record the machine's 1-minute load average at the start and the end: speeds measured under load mislead."""
    dev = hardware.device()
    load_start = os.getloadavg()[0]
    loaded, memory = {}, {}
    proc = psutil.Process()
    for name, path in paths.items():
        before = proc.memory_info().rss
        loaded[name] = models.load(path, dtype, dev)
        memory[name] = proc.memory_info().rss - before
    vocab = min(m.config.vocab_size for m in loaded.values())
    g = torch.Generator().manual_seed(seed)
    prompts = {b: torch.randint(0, vocab, (b, prompt_tokens), generator=g).to(dev) for b in batch_sizes}
    for model in loaded.values():  # warm-up: kernels, allocator, GPTQModel's CPU repacking
        prefill_decode(model, prompts[batch_sizes[0]][:, :16], 2)
    times: dict[tuple[str, int], list[tuple[float, float]]] = {(n, b): [] for n in loaded for b in batch_sizes}
    peak = {n: 0 for n in loaded}
    for _ in tqdm(range(rounds), desc="benchmark rounds"):
        for name, model in loaded.items():
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            for b in batch_sizes:
                times[name, b].append(prefill_decode(model, prompts[b], new_tokens))
            if dev.type == "cuda":
                peak[name] = max(peak[name], torch.cuda.max_memory_allocated(dev))
    out: dict[str, Any] = {}
    base = next(iter(loaded))
    for name in loaded:
        record: dict[str, Any] = {}
        for b in batch_sizes:
            prefill = _summary([b * prompt_tokens / p for p, _ in times[name, b]])
            decode = _summary([b * new_tokens / d for _, d in times[name, b]])
            suffix = "" if b == batch_sizes[0] else f"_b{b}"
            record[f"prefill_tok_s{suffix}"] = prefill["median"]
            record[f"decode_tok_s{suffix}"] = decode["median"]
            record[f"spread{suffix}"] = {"prefill_tok_s": prefill, "decode_tok_s": decode}
        out[name] = record
    for name, record in out.items():
        for b in batch_sizes:
            suffix = "" if b == batch_sizes[0] else f"_b{b}"
            record[f"prefill_vs_base{suffix}"] = record[f"prefill_tok_s{suffix}"] / out[base][f"prefill_tok_s{suffix}"]
            record[f"decode_vs_base{suffix}"] = record[f"decode_tok_s{suffix}"] / out[base][f"decode_tok_s{suffix}"]
        record["peak_mem_bytes"] = peak[name] if dev.type == "cuda" else memory[name]
        # deployed decode: the base and every checkpoint with another kernel (4-bit); the dense ones run the base's
        if dev.type == "cuda" and (name == base or models.quantized_modules(loaded[name])):
            record["decode_tok_s_compiled"] = compiled_decode_tok_s(loaded[name], prompts[batch_sizes[0]][:1], new_tokens)
            record["decode_vs_base_compiled"] = record["decode_tok_s_compiled"] / out[base]["decode_tok_s_compiled"]
        record["dtype"] = str(next(loaded[name].parameters()).dtype).removeprefix("torch.")
    settings = {"device": hardware.name(dev), "dtype": dtype, "rounds": rounds, "prompt_tokens": prompt_tokens,
                "new_tokens": new_tokens, "batch_sizes": batch_sizes, "baseline": base,
                "load_average_1m": {"start": load_start, "end": os.getloadavg()[0], "cpus": os.cpu_count()}}
    return {"machine": hardware.machine(), "settings": settings, "checkpoints": out}
