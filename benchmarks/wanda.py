"""Benchmark: WANDA width pruning of the embedded SmolLM2-135M-Instruct, WikiText-2 perplexity and pruning time.

Calibration windows come from WikiText-2 validation (../shared/data/wikitext2/valid_tokens.txt); perplexity is
measured on "\\n\\n".join(test_rows.json) in non-overlapping windows. A magnitude-only 2:4 baseline (score |W|,
no calibration) shows what the activation norms add. Writes benchmarks/results/wanda.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from llmshrink import calib, hardware, sources, wanda
from llmshrink.atomic import write_json
from llmshrink.benchmark import provenance
from llmshrink.params import MODULES
from llmshrink.params.width import Wanda
from llmshrink.perplexity import perplexity, windows

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikitext2"
CONFIGS = ["dense", "1:8", "2:4", "4:8", "unstructured", "magnitude 2:4"]
UNSTRUCTURED = "unstructured:0.5"  # the config `unstructured`: half of each row (formerly wanda.sparsity 0.5)


def magnitude_nm(model: torch.nn.Module, s: Wanda) -> dict[str, torch.nn.Linear]:
    """Baseline: zero the n smallest |W| of every m inputs (WANDA with all input norms equal)."""
    pruned = wanda.targets(model, s)
    with torch.no_grad():
        for lin in pruned.values():
            lin.weight[wanda.nm_mask(lin.weight.abs(), s.n, s.m)] = 0
    return pruned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--eval-seq-len", type=int, default=512)
    ap.add_argument("--max-windows", type=int, default=40)
    ap.add_argument("--eval-dtype", choices=["float32", "bfloat16"], default="float32",
                    help="float32: this CPU has no native bfloat16 matrix units")
    ap.add_argument("--configs", nargs="+", default=CONFIGS)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "wanda.json")
    args = ap.parse_args()

    started = time.perf_counter()
    model, tokenizer = sources.load_embedded()
    model.eval()
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    valid = (DATA / "valid_tokens.txt").read_text(encoding="utf-8")
    calib_ids = calib.token_windows(tokenizer, valid, args.samples, args.seq_len, seed=0)
    test_text = "\n\n".join(json.loads((DATA / "test_rows.json").read_text(encoding="utf-8")))
    chunks = windows(calib.tokenize(tokenizer, test_text), args.eval_seq_len, args.max_windows)

    results = []
    for config in args.configs:
        model.load_state_dict(dense_state)
        pattern = config.removeprefix("magnitude ")
        pattern = UNSTRUCTURED if pattern == "unstructured" else pattern
        s = Wanda(enabled=True, pattern=pattern, modules=MODULES, dense_layers=(),
                         samples=args.samples, seq_len=args.seq_len) if config != "dense" else None
        t0 = time.perf_counter()
        if s is None:
            row = {"config": "dense", "sparsity": 0.0}
        else:
            pruned = magnitude_nm(model, s) if config.startswith("magnitude") else wanda.prune(model, calib_ids, s)
            row = {"config": config, "sparsity": wanda.report(s, pruned)["sparsity"]}
        row["prune_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        ppl, n_tokens = perplexity(model.to(hardware.DTYPES[args.eval_dtype]), chunks, batch_size=4)
        model.float()
        row.update(ppl=round(ppl, 3), eval_s=round(time.perf_counter() - t0, 1))
        print(row, flush=True)
        results.append(row)

    write_json(args.out, {
        **provenance(),
        "model": "SmolLM2-135M-Instruct (embedded GGUF Q4_1, dequantized to float32)",
        "modules": list(MODULES),
        "calibration": {"text": "wikitext2/valid_tokens.txt", "samples": args.samples, "seq_len": args.seq_len, "seed": 0},
        "perplexity": {"text": "wikitext2/test_rows.json joined by blank lines", "seq_len": args.eval_seq_len,
                       "windows": len(chunks), "tokens_scored": n_tokens, "dtype": args.eval_dtype},
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "results": results,
        "total_s": round(time.perf_counter() - started, 1),
    })


if __name__ == "__main__":
    main()
