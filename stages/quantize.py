"""Stage quantize: GPTQ of a checkpoint with GPTQModel (a copy when gptq.enabled is false)."""
import argparse
from pathlib import Path

from llmshrink import hardware, models, quantize, timing
from llmshrink.atomic import write_json
from llmshrink.params import load, load_seed
from llmshrink.params.gptq import Gptq


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="checkpoint folder, e.g. models/lora")
    parser.add_argument("calibration", help="calibration text, e.g. data/calibration.txt")
    parser.add_argument("out", help="checkpoint folder to write, e.g. models/gptq")
    parser.add_argument("metrics", help="metrics JSON, e.g. metrics/gptq.json")
    args = parser.parse_args(argv)
    p, seed = load(Gptq), load_seed()
    if not p.enabled:
        metrics = models.passthrough(args.model, args.out)
    else:
        text = Path(args.calibration).read_text(encoding="utf-8")
        metrics = quantize.gptq(args.model, args.out, p, text, seed)
    write_json(args.metrics, hardware.stamped(metrics))
    print(f"{args.out}: {metrics}")


if __name__ == "__main__":
    with timing.stage("quantize"):
        main()
