"""Which layers the Taylor+ criterion (sum of |w * dL/dw| per weight) removes from the embedded SmolLM2-135M-Instruct,
against the former signed sum |sum w * dL/dw|, `ppl` and `block_influence`.

Calibration: 8 x 256 tokens of WikiText-2 validation (seed 0); 2, 4 and 8 layers removed, first 4 and last 2
protected (depth.layers_to_remove). Writes benchmarks/results/depth_taylor.json.
Run from the repo root: `python benchmarks/depth_taylor.py`.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from llmshrink import depth, sources
from llmshrink.atomic import write_json
from llmshrink.benchmark import provenance
from llmshrink.calib import token_windows

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikitext2"
OUT = ROOT / "benchmarks" / "results" / "depth_taylor.json"
SAMPLES, SEQ_LEN, PROTECT_FIRST, PROTECT_LAST = 8, 256, 4, 2


def signed_taylor(model: torch.nn.Module, windows: torch.Tensor) -> list[dict]:
    """The former Taylor score |sum w * dL/dw| over each layer's weight matrices, from the same loss as depth.score_taylor."""
    model.zero_grad(set_to_none=True)
    for batch in windows.split(4):
        model(batch, labels=batch).loss.mul(len(batch) / len(windows)).backward()
    with torch.no_grad():
        matrices = [[w for w in layer.parameters() if w.ndim == 2] for layer in depth.decoder_layers(model)]
        scores = [abs(sum((w * w.grad).sum().item() for w in ws)) for ws in matrices]
    model.zero_grad(set_to_none=True)
    return [{"layer": i, "score": s} for i, s in enumerate(scores)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=SAMPLES, help="calibration windows")
    ap.add_argument("--seq-len", type=int, default=SEQ_LEN, help="calibration window length")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    model, tokenizer = sources.load_embedded()
    model.eval()
    calib = token_windows(tokenizer, (DATA / "valid_tokens.txt").read_text(encoding="utf-8"), args.samples, args.seq_len,
                          seed=0)
    scores, seconds = {}, {}
    for criterion in ("taylor", "taylor_signed_sum", "block_influence", "ppl"):
        start = time.perf_counter()
        scores[criterion] = (signed_taylor(model, calib) if criterion == "taylor_signed_sum"
                             else depth.score_layers(model, calib, criterion))
        seconds[criterion] = round(time.perf_counter() - start, 1)
        print(criterion, seconds[criterion], "s", flush=True)
    removed = {c: {k: depth.layers_to_remove(s, k, PROTECT_FIRST, PROTECT_LAST) for k in (2, 4, 8)} for c, s in scores.items()}
    shared = {c: {k: sorted(set(removed["taylor"][k]) & set(r[k])) for k in r} for c, r in removed.items() if c != "taylor"}
    write_json(args.out, {
        **provenance(),
        "model": "SmolLM2-135M-Instruct (embedded, 30 layers)",
        "calibration": f"wikitext2/valid_tokens.txt, {args.samples} x {args.seq_len} tokens, seed 0",
        "protect_first": PROTECT_FIRST,
        "protect_last": PROTECT_LAST,
        "removed": removed,
        "removed_by_taylor_and_by": shared,
        "score_seconds": seconds,
        "layer_scores": {c: [round(x["score"], 6) for x in s] for c, s in scores.items()},
    })
    print(removed, f"wrote {args.out}", sep="\n")


if __name__ == "__main__":
    main()
