"""Stage explore_layers: models/base with decoder layers skipped or repeated at run time (params `explore.configs`),
scored on perplexity and TriviaQA, into metrics/explore_layers.csv and metrics/explore_samples.json."""
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from llmshrink import evaluate, explore
from llmshrink.atomic import write_json
from llmshrink.data import read_qa
from llmshrink.params import load_params

BASE = Path("models/base")


def main() -> None:
    params = load_params()
    p = params["explore"]
    for name in ("max_windows", "limit"):  # explore's own caps on perplexity windows and questions
        evaluate.check_cap(f"explore.{name}", p[name])
    e = {**evaluate.check_params(params["eval"]), "max_windows": p["max_windows"], "limit": p["limit"]}
    if not (BASE / "config.json").is_file():
        raise FileNotFoundError(f"{BASE} is not a checkpoint folder (no config.json)")
    orders = explore.check_params(p, AutoConfig.from_pretrained(BASE).num_hidden_layers)
    text = Path("data/perplexity.txt").read_text(encoding="utf-8")
    records = read_qa("data/qa.jsonl")
    dev = evaluate.device()
    model = evaluate.load_for_eval(BASE, evaluate.resolve_dtype(e["dtype"], dev), dev)
    tokenizer = AutoTokenizer.from_pretrained(BASE)

    rows, samples = explore.explore(model, tokenizer, orders, text, records, e, p["sample_prompt"], p["sample_tokens"])
    explore.write_table(rows, "metrics/explore_layers.csv")
    write_json("metrics/explore_samples.json", samples)


if __name__ == "__main__":
    main()
