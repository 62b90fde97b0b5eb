"""Benchmark: WikiText-2 perplexity and size on disk of SmolLM2-135M-Instruct unquantized (bfloat16 save),
GPTQ 4-bit (group 64) and GPTQ 4-bit + EoRA (rank 32), with the time each step takes on this machine.

Calibration windows come from WikiText-2 validation (disjoint from the test split). Every model is evaluated
with float32 activations, so the differences are those of the stored weights.
Run from the repository root: `python benchmarks/quantize.py [--samples N] [--max-windows N] [--out PATH]`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from llmshrink import hardware, models, quantize, sources
from llmshrink.atomic import write_json
from llmshrink.benchmark import provenance
from llmshrink.calib import tokenize
from llmshrink.params import read
from llmshrink.params.gptq import Eora, Gptq
from llmshrink.perplexity import perplexity, windows

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "wikitext2"
RESULTS = ROOT / "benchmarks" / "results" / "quantize.json"
SEQ_LEN, MAX_WINDOWS, BATCH = 512, 40, 4


def evaluate(model: torch.nn.Module, chunks: list[torch.Tensor], path: Path, seconds: float) -> dict[str, Any]:
    """Perplexity of `model`, size of its folder `path`, and the seconds its step took."""
    start = time.perf_counter()
    ppl, tokens = perplexity(model, chunks, BATCH)
    return {"ppl": round(ppl, 3), "tokens": tokens, "bytes": models.dir_bytes(path), "step_seconds": round(seconds, 1),
            "eval_seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=None,
                    help="GPTQ and EoRA calibration windows (default: params.yaml gptq.samples / eora.samples)")
    ap.add_argument("--max-windows", type=int, default=MAX_WINDOWS, help="512-token perplexity windows")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    raw = read(ROOT / "params.yaml")
    gptq_p = Gptq(**{**raw["gptq"], "enabled": True, "bits": 4, "group_size": 64})
    eora_p = Eora(**{**raw["eora"], "enabled": True, "rank": 32})
    if args.samples:
        gptq_p = dataclasses.replace(gptq_p, samples=args.samples)
        eora_p = dataclasses.replace(eora_p, samples=args.samples)
    seed = raw["seed"]
    test_text = "\n\n".join(json.loads((SHARED / "test_rows.json").read_text()))
    calib_text = (SHARED / "valid_tokens.txt").read_text()
    results: dict[str, Any] = {
        "setup": {"model": "SmolLM2-135M-Instruct (embedded)", "device": hardware.device().type,
                  "gptq": dataclasses.asdict(gptq_p), "eora": dataclasses.asdict(eora_p),
                  "seed": seed, "calibration": "WikiText-2 validation", "eval": "WikiText-2 test",
                  "seq_len": SEQ_LEN, "max_windows": args.max_windows, "eval_dtype": "float32"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        ref_dir, bf16_dir, gptq_dir, eora_dir = (Path(tmp) / n for n in ("fp32", "bf16", "gptq", "eora"))
        start = time.perf_counter()
        model, tokenizer = sources.load_embedded()  # drops the GGUF file's quantization_config
        models.save(model, tokenizer, ref_dir, "float32")
        models.save(model, tokenizer, bf16_dir, "bfloat16")
        seconds = time.perf_counter() - start
        chunks = windows(tokenize(tokenizer, test_text), SEQ_LEN, args.max_windows)
        results["unquantized_bf16"] = evaluate(models.load(bf16_dir), chunks, bf16_dir, seconds)
        results["unquantized_bf16"]["fp32_bytes"] = models.dir_bytes(ref_dir)

        # quantize.gptq's time includes its check of the zeros kept (it loads both checkpoints); metrics have no time
        start = time.perf_counter()
        quantize.gptq(ref_dir, gptq_dir, gptq_p, calib_text, seed)
        seconds = time.perf_counter() - start
        results["gptq_4bit"] = evaluate(models.load(gptq_dir, "float32"), chunks, gptq_dir, seconds)

        start = time.perf_counter()
        metrics = quantize.eora(ref_dir, gptq_dir, eora_dir, eora_p, calib_text, seed)
        seconds = time.perf_counter() - start
        results["gptq_4bit_eora"] = evaluate(models.load(eora_dir, "float32"), chunks, eora_dir, seconds)
        results["gptq_4bit_eora"]["adapter_bytes"] = metrics["adapter_bytes"]
    write_json(args.out, {**provenance(), **results})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
