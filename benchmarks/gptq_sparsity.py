"""GPTQ and the width-pruning zeros on the embedded SmolLM2-135M-Instruct with real WikiText-2 text.

WANDA 1:8 (calibration: 16 x 256 tokens of WikiText-2 validation), then GPTQ 4-bit, group 64 (16 x 256 calibration
tokens of the same text) with gptq.keep_sparsity off and on: the share of the pruned weights that still dequantize
to exactly 0, and the perplexity on WikiText-2 test (standard protocol, 20 x 512-token windows, float32 activations).
Writes benchmarks/results/gptq_sparsity.json. Run from the repo root: `python benchmarks/gptq_sparsity.py`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from llmshrink import models, quantize, sources, wanda
from llmshrink.atomic import write_json
from llmshrink.benchmark import provenance
from llmshrink.calib import token_windows
from llmshrink.params import read
from llmshrink.params.gptq import Gptq
from llmshrink.params.width import Wanda
from llmshrink.perplexity import text_perplexity

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikitext2"
OUT = ROOT / "benchmarks" / "results" / "gptq_sparsity.json"
SEQ_LEN, MAX_WINDOWS, BATCH = 512, 20, 4
SAMPLES, CALIB_SEQ_LEN = 16, 256  # WANDA and GPTQ calibration windows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=SAMPLES, help="WANDA and GPTQ calibration windows")
    ap.add_argument("--seq-len", type=int, default=CALIB_SEQ_LEN, help="calibration window length")
    ap.add_argument("--max-windows", type=int, default=MAX_WINDOWS, help="512-token perplexity windows")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    raw = read(ROOT / "params.yaml")
    seed = raw["seed"]
    s = Wanda(**{**raw["wanda"], "enabled": True, "pattern": "1:8", "samples": args.samples,
                        "seq_len": args.seq_len})
    gptq_p = Gptq(**{**raw["gptq"], "enabled": True, "bits": 4, "group_size": 64, "samples": args.samples,
                            "seq_len": args.seq_len})
    valid = (DATA / "valid_tokens.txt").read_text(encoding="utf-8")
    test_text = "\n\n".join(json.loads((DATA / "test_rows.json").read_text(encoding="utf-8")))

    def ppl(model) -> float:
        return round(text_perplexity(model, tokenizer, test_text, SEQ_LEN, BATCH, args.max_windows)["ppl"], 3)

    model, tokenizer = sources.load_embedded()
    model.eval()
    pruned = wanda.prune(model, token_windows(tokenizer, valid, s.samples, s.seq_len, seed), s)
    settings = {k: v for k, v in dataclasses.asdict(gptq_p).items() if k != "keep_sparsity"}
    results = {
        "setup": {"model": "SmolLM2-135M-Instruct (embedded)", "wanda": f"{s.name}, {s.samples} x {s.seq_len} tokens",
                  "gptq": settings, "calibration": "wikitext2/valid_tokens.txt", "seed": seed,
                  "perplexity": f"wikitext2 test, standard protocol, {args.max_windows} x {SEQ_LEN}-token windows, float32"},
        "wanda": {"sparsity": wanda.report(s, pruned)["sparsity"], "ppl": ppl(model)},
    }
    print(results, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "wanda"
        models.save(model, tokenizer, src, "float32")
        del model
        for keep in (False, True):
            out = Path(tmp) / f"gptq_{keep}"
            start = time.perf_counter()
            m = quantize.gptq(src, out, dataclasses.replace(gptq_p, keep_sparsity=keep), valid, seed)
            gptq_seconds = round(time.perf_counter() - start, 1)  # includes the metrics' sparsity_kept check
            results[f"gptq_keep_sparsity_{str(keep).lower()}"] = {
                "source_sparsity": m["source_sparsity"], "mask_kept": m["mask_kept"], "gptq_seconds": gptq_seconds,
                "ppl": ppl(models.load(out, "float32")),
                "seconds": round(time.perf_counter() - start, 1)}
            print(results, flush=True)
    write_json(args.out, {**provenance(), **results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
