"""Stage export: a dense checkpoint as one GGUF file (tokenizer and chat template inside) for llama.cpp-family
runtimes, made by llama.cpp's own converter and quantizer with the checkpoint's importance matrix; a copy of the
checkpoint when the section's `enabled` is false. The `export` section exports the recipe's final dense
checkpoint; the `kquant_base` section makes the llama.cpp baseline of the untouched base."""
import argparse
import sys
from pathlib import Path

from llmshrink import export, hardware, imatrix, models, timing
from llmshrink.atomic import write_json
from llmshrink.params import load
from llmshrink.params.gguf import Export, KquantBase


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="dense checkpoint folder, e.g. models/lora")
    parser.add_argument("imatrix", help="folder of its importance matrix (stage imatrix), e.g. results/imatrix/lora")
    parser.add_argument("out", help="folder to write model.gguf into, e.g. models/export")
    parser.add_argument("metrics", help="metrics JSON, e.g. metrics/export.json")
    sections = {cls.SECTION: cls for cls in (Export, KquantBase)}
    parser.add_argument("--section", default="export", choices=sorted(sections), help="params section")
    args = parser.parse_args(argv)
    p = load(sections[args.section])
    if method := models.quant_method(args.model):
        raise ValueError(f"{args.model} is a {method!r}-quantized checkpoint; export needs a dense one (e.g. models/lora)")
    if not p.enabled:
        metrics = models.passthrough(args.model, args.out)
    else:
        types = {} if p.embedding_type == "auto" else {"token_embd": p.embedding_type, "output": p.embedding_type}
        matrix = Path(args.imatrix) / imatrix.FILE_NAME if p.imatrix else None
        metrics = {**export.to_gguf(args.model, args.out, p.type, matrix, types),
                   "source_bytes": models.dir_bytes(args.model)}
        metrics["vs_source"] = metrics["bytes"] / metrics["source_bytes"]
    write_json(args.metrics, hardware.stamped(metrics))
    print(f"{args.out}: {metrics}")


if __name__ == "__main__":
    with timing.stage(sys.argv[sys.argv.index("--section") + 1] if "--section" in sys.argv else "export"):
        main()
