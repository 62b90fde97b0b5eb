"""Stage score_layers: importance of every decoder layer of a checkpoint on calibration text.

Writes `[{"layer": i, "score": s}, ...]`, HIGHER = MORE IMPORTANT for every `prune.criterion`
(for `ppl` the score is the perplexity with that layer removed).
"""
import argparse
from pathlib import Path

from transformers import AutoTokenizer

from llmshrink import depth, hardware, models, timing
from llmshrink.atomic import write_json
from llmshrink.calib import token_windows
from llmshrink.params import load, load_seed
from llmshrink.params.depth import Prune


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="checkpoint folder, e.g. models/base")
    parser.add_argument("calibration", help="calibration text, e.g. data/calibration.txt")
    parser.add_argument("out", help="layer scores JSON, e.g. metrics/layer_scores.json")
    args = parser.parse_args(argv)
    p, seed = load(Prune), load_seed()
    model = models.load(args.model, hardware.work_dtype())
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    windows = token_windows(tokenizer, Path(args.calibration).read_text(encoding="utf-8"), p.samples, p.seq_len, seed)
    scores = depth.score_layers(model, windows, p.criterion)
    write_json(args.out, scores)
    ranked = sorted(scores, key=lambda s: s["score"])
    print(f"{args.out}: {p.criterion}, least important layers {[s['layer'] for s in ranked[:5]]}")


if __name__ == "__main__":
    with timing.stage("score_layers"):
        main()
