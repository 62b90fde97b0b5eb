"""Perplexity of the embedded SmolLM2-135M-Instruct on WikiText-2 test under llmshrink.perplexity's two protocols.

`standard` (GPTQ/WANDA reference: `tokenizer(text)`, full windows, tail dropped) and `all_tokens` (no special tokens,
short tail kept), 20 x 512-token windows each, float32; and `standard` with a tokenizer that adds a BOS
(add_bos_token=True), as LLaMA tokenizers do by default (SmolLM2's adds none).
Writes benchmarks/results/ppl_protocol.json. Run from the repo root: `python benchmarks/ppl_protocol.py`.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from transformers import AutoTokenizer

from llmshrink import sources
from llmshrink.atomic import write_json
from llmshrink.benchmark import provenance
from llmshrink.calib import tokenize
from llmshrink.perplexity import text_perplexity

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikitext2"
OUT = ROOT / "benchmarks" / "results" / "ppl_protocol.json"
SEQ_LEN, MAX_WINDOWS, BATCH = 512, 20, 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-windows", type=int, default=MAX_WINDOWS, help="512-token windows per protocol")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    model, tokenizer = sources.load_embedded()
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        with_bos = AutoTokenizer.from_pretrained(tmp, add_bos_token=True)
    text = "\n\n".join(json.loads((DATA / "test_rows.json").read_text(encoding="utf-8")))
    n = len(tokenize(tokenizer, text))
    results = {"model": "SmolLM2-135M-Instruct (embedded)", "text": "wikitext2 test_rows joined by blank lines",
               "text_tokens": n, "full_windows": n // SEQ_LEN, "tail_tokens": n % SEQ_LEN,
               "default_adds_bos": tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id}
    for name, tok, protocol in (("standard", tokenizer, "standard"), ("all_tokens", tokenizer, "all_tokens"),
                                ("standard_with_bos", with_bos, "standard")):
        r = text_perplexity(model, tok, text, SEQ_LEN, BATCH, args.max_windows, protocol)
        r.pop("window_nll"), r.pop("window_tokens")  # per-window values, for intervals; not reported here
        results[name] = r
        print(name, results[name], flush=True)
    write_json(args.out, {**provenance(), **results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
