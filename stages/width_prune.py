"""Stage width_prune: structured pruning (whole MLP channels and heads removed) and/or WANDA on a checkpoint (a copy
when both are off); the new shapes and the sparsity into the metrics."""
import argparse
from pathlib import Path

from transformers import AutoTokenizer

from llmshrink import hardware, models, structured, timing, wanda
from llmshrink.atomic import atomic_dir, write_json
from llmshrink.calib import token_windows
from llmshrink.params import load, load_seed
from llmshrink.params.width import Structured, Wanda


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="checkpoint folder, e.g. models/depth")
    parser.add_argument("calibration", help="calibration text, e.g. data/calibration.txt")
    parser.add_argument("out", help="checkpoint folder to write, e.g. models/width")
    parser.add_argument("metrics", help="metrics JSON, e.g. metrics/width.json")
    args = parser.parse_args(argv)
    p, s, seed = load(Wanda), load(Structured), load_seed()
    if not p.enabled and not s.enabled:
        write_json(args.metrics, hardware.stamped(models.passthrough(args.model, args.out)))
        print(f"{args.out}: copy of {args.model} (wanda.enabled=false, structured shares 0)")
        return
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    text = Path(args.calibration).read_text(encoding="utf-8")
    dtype = models.saved_dtype(args.model)
    model = models.load(args.model, hardware.work_dtype())
    shrunk = {}
    if s.enabled:
        structured.counts(model.config, s)  # model-dependent checks before the calibration pass
        model, shrunk = structured.prune(model, token_windows(tokenizer, text, s.samples, s.seq_len, seed), s)
        print(f"{args.out}: structured {shrunk['before']} -> {shrunk['after']}")
    if p.enabled:
        wanda.targets(model, p)  # model-dependent checks before the calibration pass
        pruned = wanda.prune(model, token_windows(tokenizer, text, p.samples, p.seq_len, seed), p)
    with atomic_dir(args.out) as tmp:
        models.save(model, tokenizer, tmp, dtype)
    metrics = wanda.report(p, pruned) if p.enabled else {"enabled": False}  # counted after the cast to the saved dtype
    write_json(args.metrics, hardware.stamped({**metrics, **({"structured": shrunk} if s.enabled else {})}))
    if p.enabled:
        print(f"{args.out}: {p.name}, sparsity {metrics['sparsity']:.4f} over {len(pruned)} modules")


if __name__ == "__main__":
    with timing.stage("width_prune"):
        main()
