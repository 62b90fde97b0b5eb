"""Perplexity of the embedded SmolLM2-135M-Instruct on WikiText-2 test under evaluate's two protocols.

`standard` (GPTQ/WANDA reference: `tokenizer(text)`, full windows, tail dropped) and `all_tokens` (no special tokens,
short tail kept), 20 x 512-token windows each, float32; and `standard` with a tokenizer that adds a BOS
(add_bos_token=True), as LLaMA tokenizers do by default (SmolLM2's adds none).
Writes benchmarks/results/ppl_protocol.json. Run from the repo root: `python benchmarks/ppl_protocol.py`.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from transformers import AutoTokenizer

from llmshrink import models
from llmshrink.atomic import write_json
from llmshrink.calib import tokenize
from llmshrink.evaluate import text_perplexity

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikitext2"
OUT = ROOT / "benchmarks" / "results" / "ppl_protocol.json"
SEQ_LEN, MAX_WINDOWS, BATCH = 512, 20, 4


def main() -> None:
    model, tokenizer = models.load_embedded()
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
        results[name] = text_perplexity(model, tok, text, SEQ_LEN, BATCH, MAX_WINDOWS, protocol)
        print(name, results[name], flush=True)
    write_json(OUT, results)
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
