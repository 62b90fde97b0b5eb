"""Benchmark: run-time layer skip / repeat ("Franken-LLaMA") on the embedded SmolLM2-135M-Instruct (30 layers),
WikiText-2 test perplexity and closed-book TriviaQA from ../shared/data, for the configurations in params.yaml.

    python benchmarks/explore.py [--windows 20] [--questions 50] [--out PATH]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm import tqdm

from llmshrink import explore, sources
from llmshrink.atomic import write_json
from llmshrink.benchmark import provenance
from llmshrink.data import qa_record
from llmshrink.params import load
from llmshrink.params.evaluation import Eval
from llmshrink.params.explore import Explore
from llmshrink.perplexity import token_ids, windows

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "results" / "explore.json"


@contextmanager
def timed(module: Any, name: str) -> Iterator[list[tuple[float, Any]]]:
    """Within the block, (seconds, result) of every call of `module.name` are appended to the yielded list."""
    original, calls = getattr(module, name), []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = original(*args, **kwargs)
        calls.append((time.perf_counter() - start, out))
        return out

    setattr(module, name, wrapper)
    try:
        yield calls
    finally:
        setattr(module, name, original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=20, help="perplexity windows of 512 tokens")
    parser.add_argument("--questions", type=int, default=50, help="TriviaQA validation questions")
    parser.add_argument("--batch-size", type=int, default=8, help="perplexity windows / questions per batch")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    e = dataclasses.replace(load(Eval, ROOT / "params.yaml"), seq_len=512, max_windows=args.windows,
                            limit=args.questions, batch_size=args.batch_size, dtype="float32")
    p = load(Explore, ROOT / "params.yaml")
    orders = explore.orders(p, 30)
    text = "\n\n".join(json.loads((DATA / "wikitext2" / "test_rows.json").read_text(encoding="utf-8")))
    lines = (DATA / "triviaqa" / "validation.jsonl").read_text(encoding="utf-8").splitlines()[: args.questions]
    records = [qa_record(r["question"], r["answer"]["value"], r["answer"]["aliases"])
               for r in map(json.loads, lines)]

    torch.manual_seed(0)
    model, tokenizer = sources.load_embedded()
    model.eval()
    start = time.perf_counter()
    # explore.explore without its timing-free rows: the same windows and per-configuration explore.score, each
    # configuration timed as a whole and its perplexity pass on its own (explore.score's rows have no times)
    chunks = windows(token_ids(tokenizer, text), e.seq_len, e.max_windows)
    rows, samples = [], {}
    for name, order in tqdm(orders.items(), desc="configs"):
        config_start = time.perf_counter()
        with timed(explore, "perplexity") as ppl_calls:
            row, samples[name] = explore.score(model, tokenizer, order, chunks, records, e, p.sample_prompt,
                                               p.sample_tokens)
        ppl_seconds, (_, n_tokens) = ppl_calls[0]
        rows.append({"config": name, **row, "seconds": time.perf_counter() - config_start,
                     "ppl_seconds": ppl_seconds, "ppl_tok_s": n_tokens / ppl_seconds})
        tqdm.write(f"{name:>24}: {row['layers']:3d} layers, ppl {row['ppl']:9.3f}, EM {row['exact_match']:.3f}, "
                   f"{rows[-1]['seconds']:.1f} s | {samples[name]['sample']!r}")
    total = time.perf_counter() - start
    write_json(args.out, {
        **provenance(),
        "model": "SmolLM2-135M-Instruct (embedded, float32, 30 layers)",
        "perplexity": f"WikiText-2 raw test, {args.windows} windows x 512 tokens",
        "triviaqa": f"first {args.questions} questions of ../shared/data/triviaqa/validation.jsonl, closed book, "
                    f"greedy {e.max_new_tokens} tokens",
        "device": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "batch_size": args.batch_size,
        "seconds_total": total,
        "rows": rows,
        "samples": samples,
    })
    print(f"\n{'config':>20} {'layers':>6} {'ppl':>9} {'EM':>6} {'match':>6} {'s':>6}  order")
    for r in rows:
        print(f"{r['config']:>20} {r['layers']:>6} {r['ppl']:9.3f} {r['exact_match']:6.3f} {r['match']:6.3f} "
              f"{r['seconds']:6.1f}  {r['order']}")
    print(f"total {total:.0f} s")


if __name__ == "__main__":
    main()
