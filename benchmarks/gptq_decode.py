"""The pipeline's own 4-bit checkpoints on a GPU: GPTQ and GPTQ + EoRA of a random model of a real Llama shape
made with the pipeline's functions (`quantize.gptq`, `quantize.eora`), loaded as the stages load them
(`models.load`: tinygemm, `llmshrink.int4`), checked against GPTQModel's Triton kernel on the same windows
(relative logit error, KL), and decoded at batch 1 against the bf16 base by `benchmark.run` (interleaved
rounds, eager and compiled with a static cache).

    python benchmarks/gptq_decode.py --shape llama-3.2-1b --tokenizer device/tokenizer \
        --text device/data/text/tinyshakespeare.txt --work /tmp/gptq_decode --out benchmarks/results/gptq_decode.json

Random weights: the speeds and the agreement between kernels are real, the model's outputs mean nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmshrink import benchmark, hardware, models, quantize, sources  # noqa: E402
from llmshrink.params.gptq import Eora, Gptq  # noqa: E402
from llmshrink.calib import token_windows  # noqa: E402

GPTQ = Gptq(enabled=True, bits=4, group_size=128, desc_act=False, damp_percent=0.05, sym=True,
               keep_sparsity=False, samples=32, seq_len=2048)
EORA = Eora(enabled=True, rank=32, samples=16, seq_len=2048)


@torch.no_grad()
def agreement(path: Path, windows: torch.Tensor, dev: torch.device) -> dict[str, float]:
    """tinygemm (as the stages load it) against GPTQModel's Triton kernel on the same checkpoint and windows."""
    from gptqmodel import BACKEND, GPTQModel
    from gptqmodel.adapter.adapter import Lora

    fast = models.load(path, "bfloat16", dev)
    assert fast.gptq_kernel == models.TINYGEMM, fast.gptq_kernel
    got = fast(windows.to(dev)).logits.float()
    del fast
    adapter = Lora(rank=EORA.rank, path=str(path / models.ADAPTER_DIR)) if (path / models.ADAPTER_DIR).is_dir() else None
    triton = GPTQModel.load(str(path), adapter=adapter, device="cuda", dtype=torch.bfloat16, backend=BACKEND.TRITON).model
    want = triton(windows.to(dev)).logits.float()
    kl = F.kl_div(got.log_softmax(-1), want.log_softmax(-1), log_target=True, reduction="none").sum(-1).mean()
    return {"relative_logit_error": ((got - want).abs().mean() / want.std()).item(), "kl_to_triton": kl.item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama-3.2-1b", choices=list(sources.SHAPES))
    parser.add_argument("--tokenizer", required=True, help="a saved tokenizer folder")
    parser.add_argument("--text", type=Path, required=True, help="calibration text")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the checkpoints")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gptq_decode.json")
    args = parser.parse_args()
    dev = hardware.device()
    model, tokenizer = sources.shaped_model(args.shape, 0, args.tokenizer)
    paths = {name: args.work / name for name in ("base", "gptq", "eora")}
    models.save(model.to(torch.bfloat16), tokenizer, paths["base"], "bfloat16")
    del model
    text = args.text.read_text(encoding="utf-8")
    quantize.gptq(paths["base"], paths["gptq"], GPTQ, text, 0, dev)
    quantize.eora(paths["base"], paths["gptq"], paths["eora"], EORA, text, 0, dev)
    windows = token_windows(tokenizer, text, 4, 512, seed=1)
    result = {**benchmark.provenance(), "device": hardware.name(dev), "shape": args.shape,
              "gptq": {k: getattr(GPTQ, k) for k in ("bits", "group_size", "sym", "samples", "seq_len")},
              "eora_rank": EORA.rank,
              "agreement": {name: agreement(paths[name], windows, dev) for name in ("gptq", "eora")}}
    torch.cuda.empty_cache()
    result["speed"] = benchmark.run(paths, "bfloat16", rounds=3, prompt_tokens=128, new_tokens=128, batch_sizes=[1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    summary = {n: {k: v for k, v in r.items() if "decode" in k and "spread" not in k}
               for n, r in result["speed"]["checkpoints"].items()}
    print(json.dumps({"agreement": result["agreement"], "decode": summary}, indent=2))


if __name__ == "__main__":
    main()
