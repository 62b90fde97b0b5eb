"""Benchmark: run-time layer skip / repeat ("Franken-LLaMA") on the embedded SmolLM2-135M-Instruct (30 layers),
WikiText-2 test perplexity and closed-book TriviaQA from ../shared/data, for the configurations in params.yaml.

    python benchmarks/explore.py [--windows 20] [--questions 50]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from llmshrink import evaluate, explore, models
from llmshrink.atomic import write_json
from llmshrink.data import qa_record
from llmshrink.params import load_params

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=20, help="perplexity windows of 512 tokens")
    parser.add_argument("--questions", type=int, default=50, help="TriviaQA validation questions")
    parser.add_argument("--batch-size", type=int, default=8, help="perplexity windows / questions per batch")
    args = parser.parse_args()

    params = load_params(ROOT / "params.yaml")
    e = evaluate.check_params({**params["eval"], "seq_len": 512, "max_windows": args.windows,
                               "limit": args.questions, "batch_size": args.batch_size, "dtype": "float32"})
    p = params["explore"]
    orders = explore.check_params(p, 30)
    text = "\n\n".join(json.loads((DATA / "wikitext2" / "test_rows.json").read_text(encoding="utf-8")))
    lines = (DATA / "triviaqa" / "validation.jsonl").read_text(encoding="utf-8").splitlines()[: args.questions]
    records = [qa_record(r["question"], r["answer"]["value"], r["answer"]["aliases"])
               for r in map(json.loads, lines)]

    torch.manual_seed(0)
    model, tokenizer = models.load_embedded()
    start = time.perf_counter()
    rows, samples = explore.explore(model.eval(), tokenizer, orders, text, records, e,
                                    p["sample_prompt"], p["sample_tokens"])
    total = time.perf_counter() - start
    write_json(ROOT / "benchmarks" / "results" / "explore.json", {
        "model": "SmolLM2-135M-Instruct (embedded, float32, 30 layers)",
        "perplexity": f"WikiText-2 raw test, {args.windows} windows x 512 tokens",
        "triviaqa": f"first {args.questions} questions of ../shared/data/triviaqa/validation.jsonl, closed book, "
                    f"greedy {e['max_new_tokens']} tokens",
        "device": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "batch_size": args.batch_size,
        "seconds_total": total,
        "rows": rows,
        "samples": samples["configs"],
    })
    print(f"\n{'config':>20} {'layers':>6} {'ppl':>9} {'EM':>6} {'match':>6} {'s':>6}  order")
    for r in rows:
        print(f"{r['config']:>20} {r['layers']:>6} {r['ppl']:9.3f} {r['exact_match']:6.3f} {r['match']:6.3f} "
              f"{r['seconds']:6.1f}  {r['order']}")
    print(f"total {total:.0f} s")


if __name__ == "__main__":
    main()
