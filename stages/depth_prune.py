"""Stage depth_prune: models/depth = models/base without the `prune.layers` least important unprotected layers.

The removed original layer indices go to metrics/depth.json and to the checkpoint's config as `removed_layers`.
"""
import json
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from llmshrink import depth, models
from llmshrink.atomic import atomic_dir, write_json
from llmshrink.params import choice, load_params

BASE = "models/base"
SCORES = "metrics/layer_scores.json"
OUT = "models/depth"
METRICS = "metrics/depth.json"


def main() -> None:
    params = load_params()
    p = params["prune"]
    criterion = choice("prune.criterion", p["criterion"], depth.CRITERIA)
    dtype = choice("model.dtype", params["model"]["dtype"], models.DTYPES)
    scores = json.loads(Path(SCORES).read_text(encoding="utf-8"))
    n_layers = AutoConfig.from_pretrained(BASE).num_hidden_layers
    if len(scores) != n_layers:
        raise ValueError(f"{SCORES} scores {len(scores)} layers but {BASE} has {n_layers}: rerun score_layers")
    removed = depth.layers_to_remove(scores, p["layers"], p["protect_first"], p["protect_last"])
    model = models.load(BASE)
    tokenizer = AutoTokenizer.from_pretrained(BASE)
    record = {"criterion": criterion, **depth.prune(model, removed)}
    model.config.removed_layers = record["removed"]
    with atomic_dir(OUT) as tmp:
        models.save(model, tokenizer, tmp, dtype)
    write_json(METRICS, record)
    print(f"{OUT}: removed layers {record['removed']} ({criterion}), "
          f"{record['params_before']:,} -> {record['params_after']:,} parameters")


if __name__ == "__main__":
    main()
