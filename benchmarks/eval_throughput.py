"""Evaluation throughput against the machine's own peak: perplexity-scoring tokens/s of the evaluator
(`llmshrink.perplexity.window_nll`) in float32 and bfloat16, as model FLOP/s (2 x parameters x tokens/s) against
a `torch.mm` microbenchmark in the same dtype, and lm-eval's HF backend (`loglikelihood_rolling`, its `wikitext`
task) on the same text and model, all measured in one process on one machine.

Multiple choice (`choice`, per dtype): lm-eval's log-likelihood requests of the first `--choice-items` items of
each zero-shot task (PIQA, ARC, OpenBookQA from ../shared/data/zeroshot) scored by `harness.batched_hflm` one row
per request (`grouped = False`, the path before issue 35) and packed by context (the default), in `--rounds`
interleaved rounds with the perplexity scorer: tokens/s counts each request's context + continuation tokens (what
one row per request runs), the median over rounds, and its ratio to the perplexity scorer's tokens/s of the same
round (the median ratio; only ratios compare on a shared machine).

Writes benchmarks/results/eval_throughput.json. Usage:
    python benchmarks/eval_throughput.py [--windows 16] [--seq-len 512] [--batch-size 32] [--choice-items 8]
        [--rounds 7]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from lm_eval.tasks import TaskManager, get_task_dict
from transformers import AutoTokenizer

from llmshrink import benchmark, choice, hardware, harness, models, sources
from llmshrink.atomic import write_json
from llmshrink.perplexity import token_ids, window_nll, windows

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TASKS = ("piqa", "arc_easy", "arc_challenge", "openbook_qa")
OUT = ROOT / "benchmarks" / "results" / "eval_throughput.json"


def choice_requests(items: int, data: Path) -> list[Any]:
    """lm-eval's log-likelihood requests for the first `items` items of each zero-shot task in `data`/zeroshot."""
    tasks = get_task_dict([choice.task_config(name, data / "zeroshot" / f"{name}.jsonl") for name in TASKS],
                          TaskManager(include_defaults=False))
    requests = []
    for task in tasks.values():
        task.build_all_requests(limit=items)
        requests += task.instances
    return requests


def choice_throughput(model: torch.nn.Module, tokenizer: Any, chunks: list[torch.Tensor], args: argparse.Namespace,
                      ) -> dict[str, Any]:
    """Multiple-choice tokens/s one row per request (`per_request`) and packed by context (`grouped`), and the
    perplexity scorer's, in interleaved rounds; the medians and the median ratios to perplexity."""
    requests = choice_requests(args.choice_items, args.data)
    lms = {}
    for grouped in (False, True):
        lms[grouped] = harness.batched_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size)
        lms[grouped].grouped = grouped
    pairs = [lms[True]._encode_pair(*r.args) for r in requests]
    tokens = sum(len(c) + len(k) for c, k in pairs)
    packed = sum(len(c) for c in {tuple(c) for c, _ in pairs}) + sum(len(k) for _, k in pairs)
    ppl_tokens = sum(len(c) for c in chunks)
    lms[True].loglikelihood(requests[:8], disable_tqdm=True)  # warm-up
    rounds: dict[str, list[float]] = {"perplexity": [], "per_request": [], "grouped": []}
    lls = {}
    for _ in range(args.rounds):
        start = time.perf_counter()
        window_nll(model, chunks, args.batch_size, progress=False)
        rounds["perplexity"].append(ppl_tokens / (time.perf_counter() - start))
        for grouped, name in ((False, "per_request"), (True, "grouped")):
            start = time.perf_counter()
            lls[name] = lms[grouped].loglikelihood(requests, disable_tqdm=True)
            rounds[name].append(tokens / (time.perf_counter() - start))
    diff = max(abs(a - b) for (a, _), (b, _) in zip(lls["per_request"], lls["grouped"]))
    return {"requests": len(requests), "items": len({(r.task_name, r.doc_id) for r in requests}), "tokens": tokens,
            "packed_tokens": packed, "rounds": rounds,
            **{f"{name}_tok_s": statistics.median(v) for name, v in rounds.items()},
            **{f"{name}_vs_perplexity": statistics.median(t / p for t, p in zip(rounds[name], rounds["perplexity"]))
               for name in ("per_request", "grouped")},
            "grouped_vs_per_request": statistics.median(g / o for g, o in zip(rounds["grouped"],
                                                                               rounds["per_request"])),
            "max_abs_loglikelihood_diff": diff,
            "greedy_equal": [g for _, g in lls["per_request"]] == [g for _, g in lls["grouped"]]}


def wikitext_windows(tokenizer: Any, args: argparse.Namespace) -> list[torch.Tensor]:
    """The first `args.windows` windows of `args.seq_len` tokens of WikiText-2 test in `args.data`."""
    text = "\n\n".join(json.loads((args.data / "wikitext2" / "test_rows.json").read_text(encoding="utf-8")))
    return windows(token_ids(tokenizer, text), args.seq_len, args.windows)


def shaped(args: argparse.Namespace) -> None:
    """`choice_throughput` of a random model of a real shape in bf16 on this machine's GPU."""
    dev = hardware.device()
    model, tokenizer = sources.shaped_model(args.shape, 0, args.tokenizer)
    model = model.to(dev, torch.bfloat16).eval()
    chunks = wikitext_windows(tokenizer, args)
    window_nll(model, chunks[:args.batch_size], args.batch_size, progress=False)  # warm-up: compile
    result = {**benchmark.provenance(), "device": hardware.name(dev), "shape": args.shape, "dtype": "bfloat16",
              "settings": {k: str(v) for k, v in vars(args).items()},
              "choice": choice_throughput(model, tokenizer, chunks, args)}
    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result["choice"].items() if k != "rounds"}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--choice-items", type=int, default=8, help="items per multiple-choice task")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved multiple-choice / perplexity rounds")
    parser.add_argument("--data", type=Path, default=SHARED, help="a folder with the layout of ../shared/data")
    parser.add_argument("--shape", choices=list(sources.SHAPES),
                        help="instead: a random model of this shape in bf16 on the GPU, multiple choice against perplexity")
    parser.add_argument("--tokenizer", default="", help="with --shape: a saved tokenizer folder")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.shape:
        return shaped(args)
    base, tokenizer = sources.load_embedded()
    tmp = ROOT / "benchmarks" / "work" / "embedded"
    if not (tmp / "config.json").exists():
        models.save(base, tokenizer, tmp, "float32")
    chunks = wikitext_windows(tokenizer, args)
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
                         "lm_eval_tok_s": lm_eval_tok_s, "ours_vs_lm_eval": ours / lm_eval_tok_s,
                         "choice": choice_throughput(model, AutoTokenizer.from_pretrained(tmp), chunks, args)}
        print(json.dumps(result[dtype], indent=2), flush=True)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
