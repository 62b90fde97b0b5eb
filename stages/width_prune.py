"""Stage width_prune: WANDA on a checkpoint (a copy when wanda.enabled is false), sparsity into the metrics."""
import argparse
from pathlib import Path

from transformers import AutoTokenizer

from llmshrink import hardware, models, params, timing, wanda
from llmshrink.atomic import atomic_dir, write_json
from llmshrink.calib import token_windows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="checkpoint folder, e.g. models/depth")
    parser.add_argument("calibration", help="calibration text, e.g. data/calibration.txt")
    parser.add_argument("out", help="checkpoint folder to write, e.g. models/width")
    parser.add_argument("metrics", help="metrics JSON, e.g. metrics/width.json")
    args = parser.parse_args(argv)
    p, seed = params.load("wanda"), params.load("seed")
    if not p.enabled:
        write_json(args.metrics, models.passthrough(args.model, args.out))
        print(f"{args.out}: copy of {args.model} (wanda.enabled=false)")
        return
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dtype = models.saved_dtype(args.model)
    model = models.load(args.model, hardware.work_dtype())
    wanda.targets(model, p)  # model-dependent checks before the calibration pass
    calib = token_windows(tokenizer, Path(args.calibration).read_text(encoding="utf-8"), p.samples, p.seq_len, seed)
    pruned = wanda.prune(model, calib, p)
    with atomic_dir(args.out) as tmp:
        models.save(model, tokenizer, tmp, dtype)
    metrics = wanda.report(p, pruned)  # counted after the cast to the saved dtype
    write_json(args.metrics, metrics)
    print(f"{args.out}: {p.name}, sparsity {metrics['sparsity']:.4f} over {len(pruned)} modules")


if __name__ == "__main__":
    with timing.stage("width_prune"):
        main()
