"""Stage evaluate: one checkpoint's perplexity on every named text, QA, multiple choice and size, each with a 95%
interval, into its metrics JSON; the per-item results into a second JSON (a DVC output, for paired comparisons)."""
import argparse
import json
import sys
from pathlib import Path

from llmshrink import evaluate, hardware, harness, kl, models, qa, timing
from llmshrink.atomic import write_json
from llmshrink.params import load, load_seed
from llmshrink.params.evaluation import Eval


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="checkpoint folder, e.g. models/lora")
    parser.add_argument("data", help="folder of prepare_data: perplexity.json, qa.jsonl, choice.json, e.g. data")
    parser.add_argument("reference", help="base's log-probs (stage reference), e.g. results/reference.safetensors")
    parser.add_argument("out", help="metrics JSON to write, e.g. metrics/eval/lora.json")
    parser.add_argument("items", help="per-item results JSON to write, e.g. results/items/lora.json")
    args = parser.parse_args(argv)
    p, seed = load(Eval), load_seed()
    models.check_positions("eval.seq_len", p.seq_len, args.model)
    data = Path(args.data)
    texts = json.loads((data / "perplexity.json").read_text(encoding="utf-8"))
    tasks = json.loads((data / "choice.json").read_text(encoding="utf-8"))
    records = qa.read_qa(data / "qa.jsonl")
    reference = kl.load_reference(args.reference)
    model = models.load(args.model, hardware.resolve_dtype(p.dtype))
    tokenizer = models.load_tokenizer(args.model)
    metrics, items = evaluate.evaluate(model, tokenizer, args.model, texts, records, tasks, p, seed, reference)
    if p.lm_eval:
        (name, text), *_ = ((k, t["text"]) for k, t in texts.items() if t["domain"] == "in")
        metrics["perplexity"][name] |= harness.wikitext(model, tokenizer, None if p.lm_eval == "hub" else text, p.batch_size)
    for s in metrics["qa"].pop("samples"):
        print(f"  Q: {s['question']}\n  A: {s['generated']!r} (gold {s['answer']!r})")
    write_json(args.out, hardware.stamped(metrics))
    write_json(args.items, items)
    for name, m in metrics["perplexity"].items():
        print(f"{args.model}: ppl[{name}, {m['domain']}] {m['ppl']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}] "
              f"over {m['tokens']:,} tokens")
    for name, m in metrics["kl"].items():
        print(f"{args.model}: KL to base [{name}] {m['mean']:.4f} [{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}] per token")
    for task, m in metrics["choice"].items():
        print(f"{args.model}: {task} acc {m['acc']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}] (n={m['n']})")
    print(f"{args.model}: QA EM {metrics['qa']['exact_match']:.3f} / match {metrics['qa']['match']:.3f} "
          f"(n={metrics['qa']['n']}), {metrics['size']['disk_bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    with timing.stage("evaluate@" + Path(sys.argv[1]).name):
        main()
