"""Stage explore_layers: a checkpoint with decoder layers skipped or repeated at run time (`explore.configs`),
scored on perplexity and TriviaQA, into a CSV table and a JSON of greedy samples."""
import argparse
import dataclasses
import json
from pathlib import Path

from transformers import AutoTokenizer

from llmshrink import explore, hardware, models, plots, qa, timing
from llmshrink.atomic import write_json
from llmshrink.params import load
from llmshrink.params.evaluation import Eval
from llmshrink.params.explore import Explore


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="checkpoint folder, e.g. models/base")
    parser.add_argument("texts", help="named perplexity texts (the in-domain one is used), e.g. data/perplexity.json")
    parser.add_argument("qa", help="QA records, e.g. data/qa.jsonl")
    parser.add_argument("table", help="CSV to write, e.g. metrics/explore_layers.csv")
    parser.add_argument("samples", help="JSON of greedy samples to write, e.g. metrics/explore_samples.json")
    parser.add_argument("plot", help="PNG to write, e.g. metrics/plots/explore_layers.png")
    args = parser.parse_args(argv)
    p = load(Explore)
    e = dataclasses.replace(load(Eval), max_windows=p.max_windows, limit=p.limit)  # explore's own caps
    orders = explore.orders(p, models.read_config(args.model)["num_hidden_layers"])
    models.check_positions("eval.seq_len", e.seq_len, args.model)
    texts = json.loads(Path(args.texts).read_text(encoding="utf-8"))
    text = next(t["text"] for t in texts.values() if t["domain"] == "in")
    records = qa.read_qa(args.qa)
    model = models.load(args.model, hardware.resolve_dtype(e.dtype))
    tokenizer = AutoTokenizer.from_pretrained(args.model)

    rows, samples = explore.explore(model, tokenizer, orders, text, records, e, p.sample_prompt, p.sample_tokens)
    explore.write_table(rows, args.table)
    write_json(args.samples, samples)
    plots.explore(rows, args.plot)


if __name__ == "__main__":
    with timing.stage("explore_layers"):
        main()
