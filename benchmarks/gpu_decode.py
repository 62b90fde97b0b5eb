"""Batch-1 decode and perplexity-scoring throughput of a random model of a real Llama shape, side by side in one
process: HF eager decode against the compiled one (`llmshrink.benchmark.compiled_decode_tok_s`), and the
evaluator's scoring at several window batch sizes against the bf16 roofline.

    python benchmarks/gpu_decode.py --shape llama-3.2-1b --tokenizer device/tokenizer --out benchmarks/results/gpu_decode.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_pipeline import eval_throughput  # noqa: E402
from llmshrink import benchmark, hardware, sources  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama-3.2-1b", choices=list(sources.SHAPES))
    parser.add_argument("--tokenizer", required=True, help="a saved tokenizer folder")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32], help="scoring windows per batch")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_decode.json")
    args = parser.parse_args()
    dev = hardware.device()
    model, _ = sources.shaped_model(args.shape, 0, args.tokenizer)
    model = model.to(dev, hardware.DTYPES[hardware.resolve_dtype("auto", dev)]).eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, 128), generator=torch.Generator().manual_seed(0)).to(dev)
    eager = [32 / benchmark.prefill_decode(model, prompt, 32)[1] for _ in range(4)][1:]
    result = {**benchmark.provenance(), "shape": args.shape, "device": hardware.name(dev), "torch": torch.__version__,
              "decode_tok_s_b1_eager": statistics.median(eager),
              "decode_tok_s_b1_compiled": benchmark.compiled_decode_tok_s(model, prompt, 32)}
    result["compiled_vs_eager"] = result["decode_tok_s_b1_compiled"] / result["decode_tok_s_b1_eager"]
    result["scoring"] = {str(b): eval_throughput(model, seq_len=2048, batch=b, batches=4) for b in args.batches}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
