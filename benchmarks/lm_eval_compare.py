"""Our WikiText-2 perplexity and TriviaQA exact match against lm-eval's `wikitext` and `triviaqa` tasks,
on the embedded SmolLM2-135M-Instruct and ../shared/data, offline (lm-eval reads the local files).

Writes benchmarks/results/lm_eval_compare.json. Usage:
    python benchmarks/lm_eval_compare.py [--max-windows N] [--docs N] [--questions 200] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path
from typing import Any, Callable

import torch

from llmshrink import hardware, harness, qa, sources
from llmshrink.atomic import write_json
from llmshrink.benchmark import provenance
from llmshrink.calib import tokenize
from llmshrink.data import qa_record
from llmshrink.perplexity import perplexity, text_perplexity, windows

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "results" / "lm_eval_compare.json"
SEQ_LEN = 512
MAX_NEW_TOKENS = 16


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - start, 1)


def wikitext(model: Any, tokenizer: Any, tm: Any, max_windows: int | None, n_docs: int | None, batch_size: int) -> dict:
    """Ours on the raw test text and on lm-eval's detokenized documents; lm-eval's task with 512-token windows."""
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

    rows = json.loads((DATA / "wikitext2" / "test_rows.json").read_text(encoding="utf-8"))
    docs_file = DATA / "wikitext2" / "test_docs.jsonl"
    docs = [json.loads(line) for line in docs_file.read_text(encoding="utf-8").splitlines() if line][:n_docs]

    ours_raw, t_raw = timed(lambda: text_perplexity(
        model, tokenizer, "\n\n".join(rows), SEQ_LEN, batch_size, max_windows))
    ours_raw.pop("window_nll"), ours_raw.pop("window_tokens")  # per-window values, for intervals; not reported
    detok = [tokenize(tokenizer, wikitext_detokenizer(d)) for d in docs]
    chunks = [w for ids in detok for w in windows(ids, SEQ_LEN, protocol="all_tokens")]
    (ppl_detok, tokens_detok), t_detok = timed(lambda: perplexity(model, chunks, batch_size))

    task = harness.local_task(tm, "wikitext", "test", docs_file)
    res, t_lm = timed(lambda: harness.run(model, tokenizer, [task], tm, batch_size, max_length=SEQ_LEN, stock=True,
                                          limit=n_docs)["results"]["wikitext"])
    words = sum(len(re.split(r"\s+", d["page"])) for d in docs)
    nll = math.log(res["word_perplexity,none"]) * words
    tokens_lm = sum(len(ids) for ids in detok)  # lm-eval predicts every token, the first from its prefix token
    return {
        "ours_raw_text": {**ours_raw, "seconds": t_raw,
                          "text": "'\\n\\n'.join(test_rows.json), as data.source=local writes data/perplexity.txt"},
        "ours_detokenized_docs": {"ppl": ppl_detok, "tokens": tokens_detok, "windows": len(chunks), "seconds": t_detok,
                                  "text": "lm-eval's detokenized documents, 512-token windows per document"},
        "lm_eval": {"word_perplexity": res["word_perplexity,none"], "byte_perplexity": res["byte_perplexity,none"],
                    "bits_per_byte": res["bits_per_byte,none"], "token_ppl_derived": math.exp(nll / tokens_lm),
                    "tokens": tokens_lm, "words": words, "docs": len(docs), "max_length": SEQ_LEN, "seconds": t_lm},
    }


def triviaqa(model: Any, tokenizer: Any, tm: Any, n: int, batch_size: int) -> dict:
    """Ours (closed book, stop at newline) and lm-eval's `triviaqa` task (stops at newline, '.', ',') on the
    first `n` questions; our matcher re-scores lm-eval's answers to separate prompting from scoring."""
    path = DATA / "triviaqa" / "validation.jsonl"
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line][:n]
    records = [qa_record(r["question"], r["answer"]["value"], r["answer"]["aliases"]) for r in raw]
    ours, t_ours = timed(lambda: qa.triviaqa(model, tokenizer, records, MAX_NEW_TOKENS, batch_size))

    task = harness.local_task(tm, "triviaqa", "validation", path)
    task["generation_kwargs"] = {**task["generation_kwargs"], "max_gen_toks": MAX_NEW_TOKENS}
    out, t_lm = timed(lambda: harness.run(model, tokenizer, [task], tm, batch_size, limit=n, stock=True))
    samples = sorted(out["samples"]["triviaqa"], key=lambda s: s["doc_id"])
    answers = [s["filtered_resps"][0] for s in samples]
    lm_em = [float(s["exact_match"]) for s in samples]
    our_em = [float(qa.exact_match(a, s["doc"]["answer"]["aliases"])) for a, s in zip(answers, samples)]
    return {
        "ours": {k: ours[k] for k in ("exact_match", "match", "n")} | {"seconds": t_ours, "samples": ours["samples"]},
        "lm_eval": {"exact_match": out["results"]["triviaqa"]["exact_match,remove_whitespace"], "n": len(samples),
                    "seconds": t_lm, "samples": [{"question": s["doc"]["question"], "generated": a}
                                                 for s, a in zip(samples[:5], answers)]},
        "our_matcher_on_lm_eval_answers": {
            "exact_match": sum(our_em) / len(our_em), "match": sum(qa.match(a, s["doc"]["answer"]["aliases"])
                                                                   for a, s in zip(answers, samples)) / len(samples),
            "disagreements_with_lm_eval_em": sum(a != b for a, b in zip(lm_em, our_em))},
        "max_new_tokens": MAX_NEW_TOKENS,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-windows", type=int, default=None, help="cap on our raw-text windows (default: all)")
    ap.add_argument("--docs", type=int, default=None, help="WikiText-2 test documents for lm-eval (default: all 62)")
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    from lm_eval.tasks import TaskManager

    torch.manual_seed(0)
    dev = hardware.device()
    dtype = hardware.resolve_dtype("auto", dev)
    model, tokenizer = sources.load_embedded()
    model = model.to(dev, hardware.DTYPES[dtype]).eval()
    tm, t_index = timed(TaskManager)
    result = {
        "model": "SmolLM2-135M-Instruct (embedded)", "device": dev.type, "dtype": dtype,
        "threads": torch.get_num_threads(), "seq_len": SEQ_LEN, "batch_size": args.batch_size,
        "lm_eval_task_index_seconds": t_index,
        "wikitext": wikitext(model, tokenizer, tm, args.max_windows, args.docs, args.batch_size),
        "triviaqa": triviaqa(model, tokenizer, tm, args.questions, args.batch_size),
    }
    result = {**provenance(), **result}
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
