"""Stage gptq_gguf: GPTQ of a dense checkpoint on a llama.cpp block grid (gptq_gguf.type), packed into the
llama.cpp file that llama-quantize writes (the embedding / output matrix in gptq_gguf.embedding_type with the
importance matrix); every GPTQ weight is checked against the file as transformers reads it back."""
import argparse
from pathlib import Path

from llmshrink import gguf_gptq, hardware, imatrix, models, timing
from llmshrink.atomic import write_json
from llmshrink.params import load, load_seed
from llmshrink.params.gguf import GptqGguf


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="dense checkpoint folder, e.g. models/base")
    parser.add_argument("imatrix", help="folder of its importance matrix (stage imatrix), e.g. results/imatrix/base")
    parser.add_argument("calibration", help="calibration text, e.g. data/calibration.txt")
    parser.add_argument("out", help="folder to write model.gguf into, e.g. models/gptq_gguf")
    parser.add_argument("metrics", help="metrics JSON, e.g. metrics/gptq_gguf.json")
    args = parser.parse_args(argv)
    p, seed = load(GptqGguf), load_seed()
    if not p.enabled:
        metrics = models.passthrough(args.model, args.out)
    else:
        text = Path(args.calibration).read_text(encoding="utf-8")
        metrics = gguf_gptq.make(args.model, args.out, Path(args.imatrix) / imatrix.FILE_NAME, p, text, seed)
        metrics |= {"source_bytes": models.dir_bytes(args.model)}
        metrics["vs_source"] = metrics["bytes"] / metrics["source_bytes"]
    write_json(args.metrics, hardware.stamped(metrics))
    print(f"{args.out}: {metrics}")


if __name__ == "__main__":
    with timing.stage("gptq_gguf"):
        main()
