"""Stage depth_prune: a checkpoint without its `prune.layers` least important unprotected decoder layers.

The removed original layer indices go to the metrics and to the checkpoint's config as `removed_layers`.
"""
import argparse
import json
from pathlib import Path

from transformers import AutoTokenizer

from llmshrink import depth, hardware, models, timing
from llmshrink.atomic import atomic_dir, write_json
from llmshrink.params import load
from llmshrink.params.depth import Prune


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="checkpoint folder, e.g. models/base")
    parser.add_argument("scores", help="layer scores of score_layers, e.g. metrics/layer_scores.json")
    parser.add_argument("out", help="checkpoint folder to write, e.g. models/depth")
    parser.add_argument("metrics", help="metrics JSON, e.g. metrics/depth.json")
    args = parser.parse_args(argv)
    p = load(Prune)
    scores = json.loads(Path(args.scores).read_text(encoding="utf-8"))
    n_layers = models.read_config(args.model)["num_hidden_layers"]
    if len(scores) != n_layers:
        raise ValueError(f"{args.scores} scores {len(scores)} layers but {args.model} has {n_layers}: rerun score_layers")
    removed = depth.layers_to_remove(scores, p.layers, p.protect_first, p.protect_last)
    dtype = models.saved_dtype(args.model)
    model = models.load(args.model, dtype)
    record = {"criterion": p.criterion, **depth.prune(model, removed)}
    model.config.removed_layers = record["removed"]
    with atomic_dir(args.out) as tmp:
        models.save(model, AutoTokenizer.from_pretrained(args.model), tmp, dtype)
    write_json(args.metrics, hardware.stamped(record))
    print(f"{args.out}: removed layers {record['removed']} ({p.criterion}), "
          f"{record['params_before']:,} -> {record['params_after']:,} parameters")


if __name__ == "__main__":
    with timing.stage("depth_prune"):
        main()
