"""GPTQ and the width-pruning zeros on the embedded SmolLM2-135M-Instruct with real WikiText-2 text.

WANDA 1:8 (calibration: 16 x 256 tokens of WikiText-2 validation), then GPTQ 4-bit, group 64 (16 x 256 calibration
tokens of the same text) with gptq.keep_sparsity off and on: the share of the pruned weights that still dequantize
to exactly 0, and the perplexity on WikiText-2 test (standard protocol, 20 x 512-token windows, float32 activations).
Writes benchmarks/results/gptq_sparsity.json. Run from the repo root: `python benchmarks/gptq_sparsity.py`.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from llmshrink import models, quantize, wanda
from llmshrink.atomic import write_json
from llmshrink.calib import token_windows
from llmshrink.evaluate import text_perplexity
from llmshrink.params import load_params

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikitext2"
OUT = ROOT / "benchmarks" / "results" / "gptq_sparsity.json"
SEQ_LEN, MAX_WINDOWS, BATCH = 512, 20, 4


def main() -> None:
    params = load_params(ROOT / "params.yaml")
    seed = params["seed"]
    s = wanda.settings({**params["wanda"], "pattern": "1:8", "samples": 16, "seq_len": 256})
    gptq_p = {**params["gptq"], "enabled": True, "bits": 4, "group_size": 64, "samples": 16, "seq_len": 256}
    valid = (DATA / "valid_tokens.txt").read_text(encoding="utf-8")
    test_text = "\n\n".join(json.loads((DATA / "test_rows.json").read_text(encoding="utf-8")))

    def ppl(model) -> float:
        return round(text_perplexity(model, tokenizer, test_text, SEQ_LEN, BATCH, MAX_WINDOWS)["ppl"], 3)

    model, tokenizer = models.load_embedded()
    model.config.__dict__.pop("quantization_config", None)  # the GGUF's, see benchmarks/quantize.py
    model.eval()
    pruned = wanda.prune(model, token_windows(tokenizer, valid, s.samples, s.seq_len, seed), s)
    results = {
        "setup": {"model": "SmolLM2-135M-Instruct (embedded)", "wanda": f"{s.pattern}, {s.samples} x {s.seq_len} tokens",
                  "gptq": gptq_p, "calibration": "wikitext2/valid_tokens.txt", "seed": seed,
                  "perplexity": f"wikitext2 test, standard protocol, {MAX_WINDOWS} x {SEQ_LEN}-token windows, float32"},
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
            m = quantize.gptq(src, out, {**gptq_p, "keep_sparsity": keep}, valid, seed)
            results[f"gptq_keep_sparsity_{str(keep).lower()}"] = {
                "source_sparsity": m["source_sparsity"], "mask_kept": m["mask_kept"], "gptq_seconds": m["seconds"],
                "ppl": ppl(quantize.load_quantized(out, "float32")), "seconds": round(time.perf_counter() - start, 1)}
            print(results, flush=True)
    write_json(OUT, results)
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
