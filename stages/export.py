"""Stage export: the recipe's final dense checkpoint as one GGUF file (tokenizer and chat template inside) for
llama.cpp-family runtimes, written by llama.cpp's own converter; a copy of the checkpoint when export.enabled is
false."""
import argparse

from llmshrink import export, models, params, timing
from llmshrink.atomic import write_json


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="dense checkpoint folder, e.g. models/lora")
    parser.add_argument("out", help="folder to write model.gguf into, e.g. models/export")
    parser.add_argument("metrics", help="metrics JSON, e.g. metrics/export.json")
    args = parser.parse_args(argv)
    p = params.load("export")
    if method := models.quant_method(args.model):
        raise ValueError(f"{args.model} is a {method!r}-quantized checkpoint; export needs a dense one (e.g. models/lora)")
    if not p.enabled:
        metrics = models.passthrough(args.model, args.out)
    else:
        metrics = {**export.to_gguf(args.model, args.out, p.type), "source_bytes": models.dir_bytes(args.model)}
        metrics["vs_source"] = metrics["bytes"] / metrics["source_bytes"]
    write_json(args.metrics, metrics)
    print(f"{args.out}: {metrics}")


if __name__ == "__main__":
    with timing.stage("export"):
        main()
