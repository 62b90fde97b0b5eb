"""Benchmark: LoRA healing of the embedded SmolLM2-135M-Instruct after depth pruning (layers 20 and 24 removed)
and WANDA 1:8, WikiText-2 perplexity before and after healing, and the training time.

WANDA calibration and LoRA training text: WikiText-2 validation (../shared/data/wikitext2/valid_tokens.txt);
perplexity: "\\n\\n".join(test_rows.json), non-overlapping windows. LoRA settings are params.yaml's `lora`
section (`--steps` overrides). Writes benchmarks/results/lora.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from llmshrink import calib, depth, evaluate, lora, models, wanda
from llmshrink.atomic import write_json
from llmshrink.params import load_params

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikitext2"
REMOVED = [20, 24]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=None, help="LoRA steps (default: params.yaml lora.steps)")
    ap.add_argument("--max-windows", type=int, default=40)
    ap.add_argument("--data", default=str(DATA), help="folder with test_rows.json and valid_tokens.txt")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lora.json"))
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    p = {**params["lora"], "enabled": True}
    if args.steps:
        p["steps"] = args.steps
    lora.validate(p)
    started = time.perf_counter()

    model, tokenizer = models.load_embedded()
    model.eval()
    data = Path(args.data)
    test_ids = calib.tokenize(tokenizer, "\n\n".join(json.loads((data / "test_rows.json").read_text())))
    chunks = evaluate.windows(test_ids, 512, args.max_windows)
    valid = (data / "valid_tokens.txt").read_text(encoding="utf-8")

    def ppl() -> float:
        return round(evaluate.perplexity(model, chunks, batch_size=4)[0], 3)

    results = {"base": ppl()}
    depth.prune(model, REMOVED)
    results["depth"] = ppl()
    w = params["wanda"]
    s = wanda.settings({**w, "pattern": "1:8"})
    pruned = wanda.prune(model, calib.token_windows(tokenizer, valid, w["samples"], w["seq_len"], params["seed"]), s)
    results["width (before healing)"] = ppl()
    sparsity_all = wanda.report(s, pruned)["sparsity"]

    with tempfile.TemporaryDirectory() as tmp:
        healed = lora.heal(model, lora.text_batches(tokenizer, valid, p), p, Path(tmp) / "adapter")
    model = healed.model.eval()
    results["lora (after healing)"] = ppl()
    print(results, flush=True)

    m = healed.metrics
    write_json(args.out, {
        "model": "SmolLM2-135M-Instruct (embedded GGUF Q4_1, dequantized to float32)",
        "depth": f"removed layers {REMOVED} (fixed, not scored)",
        "wanda": {"pattern": s.pattern, "modules": w["modules"], "samples": w["samples"], "seq_len": w["seq_len"],
                  "sparsity_all_modules": sparsity_all},
        "lora": {k: p[k] for k in ("dataset", "targets", "rank", "alpha", "dropout", "lr", "steps", "batch_size",
                                   "grad_accum", "seq_len", "keep_sparsity", "seed")},
        "train_text": "wikitext2/valid_tokens.txt",
        "perplexity": {"text": "wikitext2/test_rows.json joined by blank lines", "seq_len": 512,
                       "windows": len(chunks), "dtype": "float32"},
        "ppl": results,
        "first_loss": m["first_loss"], "last_loss": m["last_loss"], "losses": [round(x, 4) for x in healed.losses],
        "train_seconds": m["train_seconds"], "seconds_per_step": round(m["train_seconds"] / p["steps"], 2),
        "sparsity_targets_before": m["sparsity_before"], "sparsity_targets_after": m["sparsity_after"],
        "device": m["device"], "dtype": m["dtype"],
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "total_s": round(time.perf_counter() - started, 1),
    })


if __name__ == "__main__":
    main()
