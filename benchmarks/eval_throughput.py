"""Evaluation throughput against the machine's own peak: perplexity-scoring tokens/s of the evaluator
(`llmshrink.perplexity.window_nll`) in float32 and bfloat16, as model FLOP/s (2 x parameters x tokens/s) against
a `torch.mm` microbenchmark in the same dtype, and lm-eval's HF backend (`loglikelihood_rolling`, its `wikitext`
task) on the same text and model, all measured in one process on one machine.

Writes benchmarks/results/eval_throughput.json. Usage:
    python benchmarks/eval_throughput.py [--windows 16] [--seq-len 512] [--batch-size 32]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from lm_eval.tasks import TaskManager
from transformers import AutoTokenizer

from llmshrink import benchmark, hardware, harness, models, sources
from llmshrink.atomic import write_json
from llmshrink.perplexity import token_ids, window_nll, windows

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikitext2"
OUT = ROOT / "benchmarks" / "results" / "eval_throughput.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    base, tokenizer = sources.load_embedded()
    tmp = ROOT / "benchmarks" / "work" / "embedded"
    if not (tmp / "config.json").exists():
        models.save(base, tokenizer, tmp, "float32")
    text = "\n\n".join(json.loads((DATA / "test_rows.json").read_text(encoding="utf-8")))
    chunks = windows(token_ids(tokenizer, text), args.seq_len, args.windows)
    tokens = sum(len(c) for c in chunks)
    result = {**benchmark.provenance(), "settings": vars(args) | {"out": str(args.out), "tokens": tokens}}
    for dtype in ("float32", "bfloat16"):
        model = models.load(tmp, dtype, torch.device("cpu"))
        params = sum(p.numel() for p in model.parameters())
        peak = hardware.matmul_gflops(hardware.DTYPES[dtype], size=2048) * 1e9
        window_nll(model, chunks[:2], args.batch_size, progress=False)  # warm-up
        start = time.perf_counter()
        window_nll(model, chunks, args.batch_size, progress=False)
        ours = tokens / (time.perf_counter() - start)
        page = tokenizer.decode(torch.cat(chunks))
        docs = ROOT / "benchmarks" / "work" / "docs.jsonl"
        docs.write_text(json.dumps({"page": page}) + "\n", encoding="utf-8")
        tm = TaskManager()
        task = harness.local_task(tm, "wikitext", "test", docs)
        start = time.perf_counter()
        harness.run(model, AutoTokenizer.from_pretrained(tmp), [task], tm, args.batch_size, max_length=args.seq_len,
                    stock=True)
        lm_eval_tok_s = tokens / (time.perf_counter() - start)
        result[dtype] = {"params": params, "matmul_peak_gflops": peak / 1e9, "ours_tok_s": ours,
                         "ours_gflops": 2 * params * ours / 1e9, "ours_share_of_peak": 2 * params * ours / peak,
                         "lm_eval_tok_s": lm_eval_tok_s, "ours_vs_lm_eval": ours / lm_eval_tok_s}
        print(json.dumps(result[dtype], indent=2), flush=True)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
