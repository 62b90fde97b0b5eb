"""Benchmark: EoRA with one eigendecomposition per distinct input covariance (`quantize.eigh_once`) against
GPTQModel's own path (one per linear layer), and float32 against float64 for that eigendecomposition.

On the pipeline's own inputs (`models/lora` as reference, `models/gptq` its GPTQ checkpoint, `data/calibration.txt`,
params.yaml's eora section), in one process and in interleaved rounds, `quantize.eora` runs as:
- `stock`: GPTQModel's path, eigh in float64 once per linear layer (7 a decoder layer);
- `once`: `eigh_once`, eigh in float64 once per distinct covariance (4 a decoder layer);
- `once_fp32`: `eigh_once` with the eigendecomposition in float32 (the covariance cast down, the result cast back).
For each: wall time, eigh calls and the seconds spent in them. Each adapter is compared with `stock`'s by the relative
Frobenius difference of B·A per layer (max and median over layers), and scored by WikiText-2 test perplexity.
The eigh calls include GPTQModel's 4 x 4 linalg warm-up. Seen here (results/eora.json): `once`'s adapter is `stock`'s
bit for bit; float32 moves B·A by up to 24% (median 6%) per layer for +0.05% perplexity, so `eigh_once` keeps
float64.
Run from the repository root: `python benchmarks/eora.py [--models DIR] [--rounds N] [--max-windows N] [--out PATH]`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from llmshrink import models, params, quantize
from llmshrink.atomic import write_json
from llmshrink.benchmark import provenance
from llmshrink.calib import tokenize
from llmshrink.params.gptq import Eora
from llmshrink.perplexity import perplexity, windows

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "wikitext2"
RESULTS = ROOT / "benchmarks" / "results" / "eora.json"
SEQ_LEN, MAX_WINDOWS, BATCH = 512, 20, 4
VARIANTS = ("stock", "once", "once_fp32")


@contextlib.contextmanager
def timed_eigh(fp32: bool) -> Iterator[list[float]]:
    """Within the block, every `torch.linalg.eigh` call's seconds go into the yielded list; with `fp32` the matrix
    is decomposed in float32 and the result cast back to its dtype."""
    seconds: list[float] = []
    eigh = torch.linalg.eigh

    def timed(a: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = eigh(a.float(), *args, **kwargs) if fp32 else eigh(a, *args, **kwargs)
        result = type(result)(t.to(a.dtype) for t in result)
        seconds.append(time.perf_counter() - start)
        return result

    torch.linalg.eigh = timed
    try:
        yield seconds
    finally:
        torch.linalg.eigh = eigh


def run(variant: str, eora: Callable[[Path], Any], out: Path) -> dict[str, Any]:
    """`eora(out)` as `variant`: its wall time, eigh calls and seconds in eigh."""
    once = quantize.eigh_once
    if variant == "stock":
        quantize.eigh_once = contextlib.nullcontext
    try:
        with timed_eigh(variant == "once_fp32") as eigh_seconds:
            start = time.perf_counter()
            eora(out)
            seconds = time.perf_counter() - start
    finally:
        quantize.eigh_once = once
    return {"seconds": seconds, "eigh_calls": len(eigh_seconds), "eigh_seconds": sum(eigh_seconds)}


def products(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """B·A in float32 of every layer of a saved LoRA adapter, by layer name."""
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    return {k.removesuffix(".lora_A.weight"): tensors[k.replace("lora_A", "lora_B")].float() @ v.float()
            for k, v in tensors.items() if k.endswith(".lora_A.weight")}


def difference(ba: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
    """Relative Frobenius difference ||BA - BA_ref|| / ||BA_ref|| per layer: max and median over layers."""
    rel = [((ba[k] - ref[k]).norm() / ref[k].norm()).item() for k in ref]
    return {"max_rel_frobenius": max(rel), "median_rel_frobenius": statistics.median(rel),
            "bitwise_equal": all(torch.equal(ba[k], ref[k]) for k in ref)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=ROOT / "models", help="folder with the pipeline's lora and gptq")
    ap.add_argument("--calibration", type=Path, default=ROOT / "data" / "calibration.txt")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the three variants, interleaved")
    ap.add_argument("--max-windows", type=int, default=MAX_WINDOWS, help="512-token perplexity windows")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    reference, quantized = args.models / "lora", args.models / "gptq"
    raw = params.read(ROOT / "params.yaml")
    p, seed, cpu = Eora(**raw["eora"]), raw["seed"], torch.device("cpu")
    text = args.calibration.read_text(encoding="utf-8")
    results: dict[str, Any] = {
        "setup": {"reference": "models/lora", "quantized": "models/gptq", "calibration": "data/calibration.txt",
                  "eora": dataclasses.asdict(p), "seed": seed, "device": "cpu", "rounds": args.rounds,
                  "eval": "WikiText-2 test", "seq_len": SEQ_LEN, "max_windows": args.max_windows,
                  "eval_dtype": "float32"},
        "runs": {v: [] for v in VARIANTS},
    }
    with tempfile.TemporaryDirectory() as tmp:
        def eora(out: Path) -> Any:
            return quantize.eora(reference, quantized, out, p, text, seed, on=cpu)

        for r in range(args.rounds):
            for v in VARIANTS:
                results["runs"][v].append(run(v, eora, Path(tmp) / f"{v}-{r}"))
                print(v, r, results["runs"][v][-1], flush=True)
        median = {v: statistics.median(x["seconds"] for x in results["runs"][v]) for v in VARIANTS}
        results["median_seconds"] = median
        results["speedup_over_stock"] = {v: median["stock"] / median[v] for v in VARIANTS}
        ba = {v: products(Path(tmp) / f"{v}-0" / models.ADAPTER_DIR) for v in VARIANTS}
        results["ba_vs_stock"] = {v: difference(ba[v], ba["stock"]) for v in VARIANTS[1:]}
        test_text = "\n\n".join(json.loads((SHARED / "test_rows.json").read_text()))
        chunks = windows(tokenize(AutoTokenizer.from_pretrained(quantized), test_text), SEQ_LEN, args.max_windows)
        # stock's perplexity is once's where their adapters are bitwise equal (ba_vs_stock)
        results["ppl"] = {name: perplexity(models.load(path, "float32"), chunks, BATCH)[0] for name, path in
                          (("gptq", quantized), ("once", Path(tmp) / "once-0"), ("once_fp32", Path(tmp) / "once_fp32-0"))}
    write_json(args.out, {**provenance(), **results})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
