"""Depth-pruning benchmark on the embedded SmolLM2-135M-Instruct with real WikiText-2 text.

Scores the layers with every criterion on calibration windows of the WikiText-2 validation text (float32, as the
score_layers stage does, timed), removes 2, 4 and 8 layers (protect first 4, last 2) and reports the perplexity
on the WikiText-2 test text ("\\n\\n".join(test_rows.json), non-overlapping 512-token windows, capped).
Writes benchmarks/results/depth.json. Run from the repo root: `python benchmarks/depth.py`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from llmshrink import depth, sources
from llmshrink.atomic import write_json
from llmshrink.benchmark import provenance
from llmshrink.calib import token_windows, tokenize
from llmshrink.perplexity import perplexity, windows

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikitext2"
OUT = ROOT / "benchmarks" / "results" / "depth.json"


def eval_dtype(model: torch.nn.Module, chunks: list[torch.Tensor], batch_size: int) -> tuple[torch.dtype, dict[str, float]]:
    """bfloat16 if a perplexity pass over `chunks` is faster in it than in float32, with both timings; the model
    is left in the chosen dtype (the probe used to leave it in bfloat16 whatever it chose)."""
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        start = time.perf_counter()
        perplexity(model, chunks, batch_size, progress=False)
        seconds[str(dtype).removeprefix("torch.")] = time.perf_counter() - start
    chosen = torch.bfloat16 if seconds["bfloat16"] < seconds["float32"] else torch.float32
    model.to(chosen)
    return chosen, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=8, help="calibration windows (prune.samples)")
    ap.add_argument("--seq-len", type=int, default=256, help="calibration window length (prune.seq_len)")
    ap.add_argument("--eval-windows", type=int, default=40, help="cap on 512-token perplexity windows")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    model, tokenizer = sources.load_embedded()
    model.eval()
    calib = token_windows(tokenizer, (DATA / "valid_tokens.txt").read_text(encoding="utf-8"), args.samples, args.seq_len, args.seed)
    test_text = "\n\n".join(json.loads((DATA / "test_rows.json").read_text(encoding="utf-8")))
    chunks = windows(tokenize(tokenizer, test_text), 512, args.eval_windows)

    scores, score_seconds = {}, {}
    for criterion in depth.CRITERIA:
        start = time.perf_counter()
        scores[criterion] = depth.score_layers(model, calib, criterion, args.batch_size)
        score_seconds[criterion] = round(time.perf_counter() - start, 1)
        print(f"{criterion}: scored in {score_seconds[criterion]} s", flush=True)

    dtype, dtype_seconds = eval_dtype(model, chunks[:1], args.batch_size)
    n = len(depth.decoder_layers(model))
    ppl_cache: dict[tuple[int, ...], float] = {}

    def ppl_without(removed: list[int]) -> float:
        if tuple(removed) not in ppl_cache:
            with depth.layers_kept(model, [i for i in range(n) if i not in removed]):
                ppl_cache[tuple(removed)] = perplexity(model, chunks, args.batch_size)[0]
        return ppl_cache[tuple(removed)]

    dense = ppl_without([])
    print(f"dense: ppl {dense:.3f}", flush=True)
    results = {}
    for criterion in depth.CRITERIA:
        results[criterion] = {}
        for k in (2, 4, 8):
            removed = depth.layers_to_remove(scores[criterion], k, protect_first=4, protect_last=2)
            results[criterion][k] = {"removed": removed, "ppl": round(ppl_without(removed), 3)}
            print(f"{criterion} -{k}: {removed} ppl {results[criterion][k]['ppl']}", flush=True)

    write_json(args.out, {
        **provenance(),
        "model": "SmolLM2-135M-Instruct (embedded, 30 layers)",
        "calibration": f"wikitext2/valid_tokens.txt, {args.samples} x {args.seq_len} tokens, seed {args.seed}",
        "perplexity_text": f"wikitext2 test_rows joined by blank lines, {len(chunks)} x 512-token windows "
                           f"({sum(len(c) - 1 for c in chunks)} predicted tokens)",
        "protect_first": 4,
        "protect_last": 2,
        "eval_dtype": str(dtype).removeprefix("torch."),
        "eval_dtype_probe_seconds": {k: round(v, 1) for k, v in dtype_seconds.items()},
        "dense_ppl": round(dense, 3),
        "score_seconds": score_seconds,
        "ppl_after_removal": results,
        "layer_scores": {c: [round(s["score"], 6) for s in v] for c, v in scores.items()},
        "total_seconds": round(time.perf_counter() - started, 1),
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
