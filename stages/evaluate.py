"""Stage evaluate: perplexity, TriviaQA and size of one checkpoint into its metrics JSON."""
import argparse
import sys
from pathlib import Path

from transformers import AutoTokenizer

from llmshrink import evaluate, hardware, harness, models, params, perplexity, qa, timing
from llmshrink.atomic import write_json


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="checkpoint folder, e.g. models/lora")
    parser.add_argument("text", help="held-out perplexity text, e.g. data/perplexity.txt")
    parser.add_argument("qa", help="QA records, e.g. data/qa.jsonl")
    parser.add_argument("out", help="metrics JSON to write, e.g. metrics/eval/lora.json")
    args = parser.parse_args(argv)
    p = params.load("eval")
    models.read_config(args.model)
    text = Path(args.text).read_text(encoding="utf-8")
    records = qa.read_qa(args.qa)
    model = models.load(args.model, hardware.resolve_dtype(p.dtype))
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    # before any forward pass: GPTQModel's CPU kernel repacks its weights on the first one (no dequantizing after)
    size = evaluate.model_size(model, args.model)

    wikitext = perplexity.text_perplexity(model, tokenizer, text, p.seq_len, p.batch_size, p.max_windows)
    if p.lm_eval:
        wikitext |= harness.wikitext(model, tokenizer, None if p.lm_eval == "hub" else text, p.batch_size)
    trivia = qa.triviaqa(model, tokenizer, records, p.max_new_tokens, p.batch_size, p.chat_template, p.limit)
    for s in trivia.pop("samples"):
        print(f"  Q: {s['question']}\n  A: {s['generated']!r} (gold {s['answer']!r})")
    metrics = {"wikitext": wikitext, "triviaqa": trivia, "size": size, "dtype": evaluate.model_dtype(model)}
    write_json(args.out, metrics)
    print(f"{args.model}: ppl {wikitext['ppl']:.3f} over {wikitext['tokens']:,} tokens, TriviaQA EM "
          f"{trivia['exact_match']:.3f} / match {trivia['match']:.3f} (n={trivia['n']}), {size['disk_bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    with timing.stage("evaluate@" + Path(sys.argv[1]).name):
        main()
