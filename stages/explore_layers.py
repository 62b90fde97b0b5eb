"""Stage explore_layers: a checkpoint with decoder layers skipped or repeated at run time (`explore.configs`),
scored on perplexity and TriviaQA, into a CSV table and a JSON of greedy samples."""
import argparse
import dataclasses
from pathlib import Path

from transformers import AutoTokenizer

from llmshrink import explore, hardware, models, params, qa, timing
from llmshrink.atomic import write_json


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="checkpoint folder, e.g. models/base")
    parser.add_argument("text", help="held-out perplexity text, e.g. data/perplexity.txt")
    parser.add_argument("qa", help="QA records, e.g. data/qa.jsonl")
    parser.add_argument("table", help="CSV to write, e.g. metrics/explore_layers.csv")
    parser.add_argument("samples", help="JSON of greedy samples to write, e.g. metrics/explore_samples.json")
    args = parser.parse_args(argv)
    p = params.load("explore")
    e = dataclasses.replace(params.load("eval"), max_windows=p.max_windows, limit=p.limit)  # explore's own caps
    orders = explore.orders(p, models.read_config(args.model)["num_hidden_layers"])
    text = Path(args.text).read_text(encoding="utf-8")
    records = qa.read_qa(args.qa)
    model = models.load(args.model, hardware.resolve_dtype(e.dtype))
    tokenizer = AutoTokenizer.from_pretrained(args.model)

    rows, samples = explore.explore(model, tokenizer, orders, text, records, e, p.sample_prompt, p.sample_tokens)
    explore.write_table(rows, args.table)
    write_json(args.samples, samples)


if __name__ == "__main__":
    with timing.stage("explore_layers"):
        main()
