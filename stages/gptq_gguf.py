"""Stage gptq_gguf: GPTQ of a dense checkpoint on a llama.cpp block grid (gptq_gguf.type), packed into the
llama.cpp file that llama-quantize writes (the embedding / output matrix in gptq_gguf.embedding_type with the
importance matrix); every GPTQ weight is checked against the file as transformers reads it back."""
import argparse
from pathlib import Path

import torch

from llmshrink import export, gguf_gptq, hardware, imatrix, models, params, timing
from llmshrink.atomic import atomic_dir, write_json
from llmshrink.calib import token_windows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="dense checkpoint folder, e.g. models/base")
    parser.add_argument("imatrix", help="folder of its importance matrix (stage imatrix), e.g. results/imatrix/base")
    parser.add_argument("calibration", help="calibration text, e.g. data/calibration.txt")
    parser.add_argument("out", help="folder to write model.gguf into, e.g. models/gptq_gguf")
    parser.add_argument("metrics", help="metrics JSON, e.g. metrics/gptq_gguf.json")
    args = parser.parse_args(argv)
    p, seed = params.load("gptq_gguf"), params.load("seed")
    if not p.enabled:
        write_json(args.metrics, models.passthrough(args.model, args.out))
        return
    model = models.load(args.model, "float32")
    text = Path(args.calibration).read_text(encoding="utf-8")
    windows = token_windows(models.load_tokenizer(args.model), text, p.samples, p.seq_len, seed)
    names = {n: g for n, g in imatrix.gguf_names(model).items() if g.startswith("blk.")}
    with timing.part("gptq_gguf/gptq"):
        blocks = gguf_gptq.quantize_layers(model, windows, p.type, names, p.damp_percent)
    emb = {} if p.embedding_type == "auto" else {"token_embd": p.embedding_type, "output": p.embedding_type}
    with atomic_dir(args.out) as tmp:
        described = export.to_gguf(args.model, tmp / "container", p.type, Path(args.imatrix) / imatrix.FILE_NAME, emb,
                                   pure=True)
        (tmp / "container" / export.GGUF_NAME).rename(tmp / export.GGUF_NAME)
        (tmp / "container").rmdir()
        gguf_gptq.write_blocks(tmp / export.GGUF_NAME, blocks, p.type, model.config)
        read_back = dict(models.load(tmp, "float32", torch.device("cpu")).named_modules())
        for name in names:
            if not torch.equal(read_back[name].weight, dict(model.named_modules())[name].weight):
                raise RuntimeError(f"{name}: the GGUF file does not hold the GPTQ weights (row order?)")
    metrics = {**described, **export.describe(Path(args.out) / export.GGUF_NAME), "gptq_type": p.type,
               "samples": p.samples, "seq_len": p.seq_len, "damp_percent": p.damp_percent,
               "device": hardware.name(model.device), "source_bytes": models.dir_bytes(args.model)}
    metrics["vs_source"] = metrics["bytes"] / metrics["source_bytes"]
    write_json(args.metrics, metrics)
    print(f"{args.out}: {metrics}")


if __name__ == "__main__":
    with timing.stage("gptq_gguf"):
        main()
