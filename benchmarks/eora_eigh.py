"""Benchmark: the eigendecompositions of EoRA for one decoder layer of a real shape, GPTQModel's seven (one per
linear layer) against `quantize.eigh_once`'s four (one per distinct input covariance), in float64 and float32.

GPTQModel's EoRA (`gptqmodel.eora.eora.eora_compute_lora`) eigendecomposes each layer's input covariance in float64:
q/k/v and gate/up read the hidden state (hidden × hidden), o_proj the attention output (hidden × hidden here),
down_proj the MLP's (intermediate × intermediate). The covariances are those of random activations (`--tokens`
of them, as many as the calibration); an eigendecomposition's time hardly depends on the spectrum. Only the eigh
calls are timed, on the default device (the GPU where there is one), each the median of `--repeats`.
Seen on an H100 (results/eora_eigh.json): at llama-3.2-3b the model's eigendecompositions take 28 s in float64
as GPTQModel does them and 23 s with `eigh_once` (1.24x); float32 would save a further 20%.
Run from the repository root: `python benchmarks/eora_eigh.py [--shape NAME] [--out PATH]`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from llmshrink.atomic import write_json
from llmshrink.benchmark import provenance

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "eora_eigh.json"
SHAPES = {"llama-3.2-3b": (3072, 8192, 28), "llama-3.2-1b": (2048, 8192, 16), "smollm2-135m": (576, 1536, 30)}
STOCK, ONCE = {"hidden": 6, "intermediate": 1}, {"hidden": 3, "intermediate": 1}  # eighs a layer, by covariance


def seconds(cov: torch.Tensor, dtype: torch.dtype, repeats: int) -> float:
    """Median seconds of `torch.linalg.eigh` on `cov` cast to `dtype` (after one warm-up)."""
    a = cov.to(dtype)
    times = []
    for _ in range(repeats + 1):
        torch.cuda.synchronize() if a.is_cuda else None
        start = time.perf_counter()
        torch.linalg.eigh(a)
        torch.cuda.synchronize() if a.is_cuda else None
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=SHAPES, default="llama-3.2-3b")
    ap.add_argument("--tokens", type=int, default=2048, help="activations per covariance (eora samples × seq_len)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    hidden, intermediate, layers = SHAPES[args.shape]
    on = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator(on).manual_seed(0)
    covs = {name: (x := torch.randn(args.tokens, d, device=on, generator=g)).T @ x / args.tokens
            for name, d in (("hidden", hidden), ("intermediate", intermediate))}
    per_eigh = {str(dtype).removeprefix("torch."): {name: seconds(c, dtype, args.repeats) for name, c in covs.items()}
                for dtype in (torch.float64, torch.float32)}
    per_layer = {f"{path}_{dtype}": sum(n * t[name] for name, n in counts.items())
                 for path, counts in (("stock", STOCK), ("once", ONCE)) for dtype, t in per_eigh.items()}
    results = {"setup": {"shape": args.shape, "hidden": hidden, "intermediate": intermediate, "layers": layers,
                         "tokens": args.tokens, "repeats": args.repeats, "device": str(on)},
               "eigh_seconds": per_eigh, "layer_eigh_seconds": per_layer,
               "model_eigh_seconds": {k: v * layers for k, v in per_layer.items()},
               "ratio_stock_float64_over": {k: per_layer["stock_float64"] / v for k, v in per_layer.items()}}
    write_json(args.out, {**provenance(), **results})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
