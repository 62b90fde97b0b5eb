"""4-bit against bf16 on one GPU, side by side in one process: batch-1 decode of a random model of a real Llama
shape compiled with a static cache (`benchmark.compiled_decode_tok_s`), bf16 against every decoder matrix on
tinygemm (`llmshrink.int4`, group 128, round to nearest) with and without a rank-32 adapter (EoRA's shape); and
one layer's matmul at several row counts, bf16 against tinygemm against dequantize-then-matmul.

    python benchmarks/int4_decode.py --shapes llama-3.2-1b llama-3.1-8b --out benchmarks/results/int4_decode.json

Random weights: the speeds are real, the outputs mean nothing. On a CPU `--shapes tiny` is a dry run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmshrink import benchmark, hardware, int4, sources  # noqa: E402

TINY = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
GROUP = 128
RANK = 32  # EoRA's rank in the thesis
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def shaped(shape: str, dev: torch.device) -> LlamaForCausalLM:
    dims = TINY if shape == "tiny" else sources.SHAPES[shape]
    config = LlamaConfig(vocab_size=sources.LLAMA3_VOCAB, max_position_embeddings=4096, **dims)
    torch.manual_seed(0)
    with dev:
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            return LlamaForCausalLM(config).eval()
        finally:
            torch.set_default_dtype(default)


def to_int4(model: LlamaForCausalLM, rank: int) -> None:
    """Every decoder matrix rounded onto tinygemm (in place), with a random rank-`rank` adapter when rank > 0."""
    for layer in model.model.layers:
        for block in (layer.self_attn, layer.mlp):
            for name in PROJECTIONS:
                if isinstance(linear := getattr(block, name, None), torch.nn.Linear):
                    moved = int4.Int4Linear.round_to_nearest(linear, GROUP)
                    if rank:
                        moved.lora_A = torch.randn(linear.in_features, rank, dtype=torch.bfloat16, device=linear.weight.device) * 0.01
                        moved.lora_B = torch.randn(rank, linear.out_features, dtype=torch.bfloat16, device=linear.weight.device) * 0.01
                    setattr(block, name, moved)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights a decode step reads: parameters and the 4-bit layers' packed weights and scales."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, int4.Int4Linear):
            total += sum(b.numel() * b.element_size() for n, b in m.named_buffers() if n != "nibbles")
    return total


def layer_timings(k: int, n: int, dev: torch.device, rows: list[int], reps: int = 50) -> dict[str, dict[str, float]]:
    """Microseconds per call of one [n, k] layer at each row count: bf16, tinygemm, dequantize + bf16 matmul."""
    linear = torch.nn.Linear(k, n, bias=False, device=dev, dtype=torch.bfloat16)
    moved = int4.Int4Linear.round_to_nearest(linear, GROUP)
    paths = {"bf16": linear,
             "tinygemm": lambda x: torch.ops.aten._weight_int4pack_mm(x, moved.packed, GROUP, moved.scales_and_zeros)
             if dev.type == "cuda" else moved(x),
             "dequantize_matmul": lambda x: x @ moved.dequantize_weight()}
    out: dict[str, dict[str, float]] = {}
    for m in rows:
        x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        out[str(m)] = {}
        for name, fn in paths.items():
            for _ in range(3):
                fn(x)
            benchmark.sync(dev)
            start = time.perf_counter()
            for _ in range(reps):
                fn(x)
            benchmark.sync(dev)
            out[str(m)][name] = (time.perf_counter() - start) / reps * 1e6
    return out


def run_shape(shape: str, dev: torch.device, new_tokens: int) -> dict[str, Any]:
    prompt = torch.randint(0, sources.LLAMA3_VOCAB, (1, 128), generator=torch.Generator().manual_seed(0)).to(dev)
    result: dict[str, Any] = {"decode_tok_s_b1_compiled": {}, "weight_bytes": {}}
    for name, rank in (("bf16", None), ("int4", 0), ("int4_rank32", RANK)):
        model = shaped(shape, dev)
        if rank is not None:
            to_int4(model, rank)
        torch._dynamo.reset()
        result["weight_bytes"][name] = weight_bytes(model)
        result["decode_tok_s_b1_compiled"][name] = benchmark.compiled_decode_tok_s(model, prompt, new_tokens)
        print(shape, name, result["decode_tok_s_b1_compiled"][name], flush=True)
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    base = result["decode_tok_s_b1_compiled"]["bf16"]
    result["decode_vs_bf16"] = {k: v / base for k, v in result["decode_tok_s_b1_compiled"].items()}
    dims = TINY if shape == "tiny" else sources.SHAPES[shape]
    h, f = dims["hidden_size"], dims["intermediate_size"]
    result["layer_us"] = {f"{h}->{f}": layer_timings(h, f, dev, [1, 16, 64, 512, 4096]),
                          f"{f}->{h}": layer_timings(f, h, dev, [1, 16, 64, 512, 4096])}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["llama-3.2-1b"], choices=["tiny", *sources.SHAPES])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "int4_decode.json")
    args = parser.parse_args()
    dev = hardware.device()
    result = {**benchmark.provenance(), "device": hardware.name(dev), "group_size": GROUP, "adapter_rank": RANK,
              "new_tokens": args.new_tokens, "shapes": {}}
    for shape in args.shapes:
        result["shapes"][shape] = run_shape(shape, dev, args.new_tokens)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({s: r["decode_vs_bf16"] for s, r in result["shapes"].items()}, indent=2))


if __name__ == "__main__":
    main()
