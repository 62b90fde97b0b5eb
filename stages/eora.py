"""Stage eora: a GPTQ checkpoint plus an EoRA adapter (`adapter/`) fitted against its unquantized source.

A copy of the GPTQ checkpoint when eora.enabled is false or the checkpoint is not quantized (gptq.enabled=false);
the metrics say which."""
import argparse
from pathlib import Path

from llmshrink import hardware, models, quantize, timing
from llmshrink.atomic import write_json
from llmshrink.params import load, load_seed
from llmshrink.params.gptq import Eora


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("reference", help="unquantized checkpoint, e.g. models/lora")
    parser.add_argument("quantized", help="its GPTQ checkpoint, e.g. models/gptq")
    parser.add_argument("calibration", help="calibration text, e.g. data/calibration.txt")
    parser.add_argument("out", help="checkpoint folder to write, e.g. models/eora")
    parser.add_argument("metrics", help="metrics JSON, e.g. metrics/eora.json")
    args = parser.parse_args(argv)
    p, seed = load(Eora), load_seed()
    if not p.enabled or not models.is_quantized(args.quantized):
        reason = "eora.enabled=false" if not p.enabled else f"{args.quantized} is not quantized (gptq.enabled=false)"
        metrics = {**models.passthrough(args.quantized, args.out), "reason": reason}
    else:
        text = Path(args.calibration).read_text(encoding="utf-8")
        metrics = quantize.eora(args.reference, args.quantized, args.out, p, text, seed)
    write_json(args.metrics, hardware.stamped(metrics))
    print(f"{args.out}: {metrics}")


if __name__ == "__main__":
    with timing.stage("eora"):
        main()
