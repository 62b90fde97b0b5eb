"""Stage score_layers: importance of every decoder layer of models/base on calibration text.

Writes metrics/layer_scores.json, `[{"layer": i, "score": s}, ...]`, HIGHER = MORE IMPORTANT for every
`prune.criterion` (for `ppl` the score is the perplexity with that layer removed).
"""
from pathlib import Path

from transformers import AutoTokenizer

from llmshrink import depth, models
from llmshrink.atomic import write_json
from llmshrink.calib import token_windows
from llmshrink.params import choice, in_range, load_params

BASE = "models/base"
CALIBRATION = "data/calibration.txt"
OUT = "metrics/layer_scores.json"


def main() -> None:
    params = load_params()
    p = params["prune"]
    criterion = choice("prune.criterion", p["criterion"], depth.CRITERIA)
    in_range("prune.samples", p["samples"], 1, float("inf"))
    in_range("prune.seq_len", p["seq_len"], 2, float("inf"))
    model = models.load(BASE)
    tokenizer = AutoTokenizer.from_pretrained(BASE)
    text = Path(CALIBRATION).read_text(encoding="utf-8")
    windows = token_windows(tokenizer, text, p["samples"], p["seq_len"], params["seed"])
    scores = depth.score_layers(model, windows, criterion)
    write_json(OUT, scores)
    ranked = sorted(scores, key=lambda s: s["score"])
    print(f"{OUT}: {criterion}, least important layers {[s['layer'] for s in ranked[:5]]}")


if __name__ == "__main__":
    main()
