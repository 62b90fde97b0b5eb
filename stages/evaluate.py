"""Stage evaluate: perplexity, TriviaQA, size and speed of models/<name> into metrics/eval/<name>.json."""
import sys
from pathlib import Path

from transformers import AutoTokenizer

from llmshrink import evaluate, harness, qa
from llmshrink.atomic import write_json
from llmshrink.data import read_qa
from llmshrink.params import load_params


def main(name: str) -> None:
    p = evaluate.check_params(load_params()["eval"])
    path = Path("models") / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint folder (no config.json)")
    text = Path("data/perplexity.txt").read_text(encoding="utf-8")
    records = read_qa("data/qa.jsonl")
    dev = evaluate.device()
    model = evaluate.load_for_eval(path, evaluate.resolve_dtype(p["dtype"], dev), dev)
    tokenizer = AutoTokenizer.from_pretrained(path)
    # before any forward pass: GPTQModel's CPU kernel repacks its weights on the first one (no dequantizing after)
    size = evaluate.model_size(model, path)

    wikitext = evaluate.text_perplexity(model, tokenizer, text, p["seq_len"], p["batch_size"], p["max_windows"])
    if p["lm_eval"]:
        wikitext |= harness.wikitext(model, tokenizer, None if p["lm_eval"] == "hub" else text, p["batch_size"])
    trivia = qa.triviaqa(model, tokenizer, records, p["max_new_tokens"], p["batch_size"], p["chat_template"], p["limit"])
    for s in trivia.pop("samples"):
        print(f"  Q: {s['question']}\n  A: {s['generated']!r} (gold {s['answer']!r})")
    metrics = {
        "wikitext": wikitext,
        "triviaqa": trivia,
        "size": size,
        "speed": evaluate.speed(model, p["speed_prompt_tokens"], p["speed_new_tokens"]),
        "dtype": evaluate.model_dtype(model),
    }
    write_json(Path("metrics/eval") / f"{name}.json", metrics)
    print(f"{name}: ppl {wikitext['ppl']:.3f} over {wikitext['tokens']:,} tokens, TriviaQA EM "
          f"{trivia['exact_match']:.3f} / match {trivia['match']:.3f} (n={trivia['n']}), "
          f"{metrics['size']['disk_bytes'] / 1e6:.1f} MB, decode {metrics['speed']['decode_tok_s']:.1f} tok/s")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python stages/evaluate.py <checkpoint name under models/>")
    main(sys.argv[1])
