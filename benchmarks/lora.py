"""Benchmark: LoRA healing of the embedded SmolLM2-135M-Instruct after depth pruning (layers 20 and 24 removed)
and WANDA 1:8, WikiText-2 perplexity before and after healing, and the training time.

WANDA calibration and LoRA training text: WikiText-2 validation (../shared/data/wikitext2/valid_tokens.txt);
perplexity: "\\n\\n".join(test_rows.json), non-overlapping windows. LoRA settings are params.yaml's `lora`
section (`--steps` overrides). Writes benchmarks/results/lora.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from llmshrink import calib, depth, lora, sources, wanda
from llmshrink.atomic import write_json
from llmshrink.benchmark import provenance
from llmshrink.params import read
from llmshrink.params.lora import Lora
from llmshrink.params.width import Wanda
from llmshrink.perplexity import perplexity, windows

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikitext2"
REMOVED = [20, 24]


@contextmanager
def timed(module: Any, name: str) -> Iterator[list[float]]:
    """Within the block, the seconds of every call of `module.name` are appended to the yielded list (lora.heal no
    longer reports its training time: this times the same call, lora.train, that it used to time)."""
    original, seconds = getattr(module, name), []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    setattr(module, name, wrapper)
    try:
        yield seconds
    finally:
        setattr(module, name, original)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=None, help="LoRA steps (default: params.yaml lora.steps)")
    ap.add_argument("--max-windows", type=int, default=40)
    ap.add_argument("--data", default=str(DATA), help="folder with test_rows.json and valid_tokens.txt")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lora.json"))
    args = ap.parse_args()
    raw = read(ROOT / "params.yaml")
    seed = raw["seed"]  # the one seed (formerly lora.seed and the WANDA calibration's params seed)
    p = Lora(**{**raw["lora"], "enabled": True, **({"steps": args.steps} if args.steps else {})})
    started = time.perf_counter()

    model, tokenizer = sources.load_embedded()
    model.eval()
    data = Path(args.data)
    test_ids = calib.tokenize(tokenizer, "\n\n".join(json.loads((data / "test_rows.json").read_text())))
    chunks = windows(test_ids, 512, args.max_windows)
    valid = (data / "valid_tokens.txt").read_text(encoding="utf-8")

    def ppl() -> float:
        return round(perplexity(model, chunks, batch_size=4)[0], 3)

    results = {"base": ppl()}
    depth.prune(model, REMOVED)
    results["depth"] = ppl()
    s = Wanda(**{**raw["wanda"], "enabled": True, "pattern": "1:8"})
    pruned = wanda.prune(model, calib.token_windows(tokenizer, valid, s.samples, s.seq_len, seed), s)
    results["width (before healing)"] = ppl()
    sparsity_all = wanda.report(s, pruned)["sparsity"]

    with tempfile.TemporaryDirectory() as tmp, timed(lora, "train") as seconds:
        healed = lora.heal(model, lora.text_batches(tokenizer, valid, p, seed), p, seed, Path(tmp) / "adapter")
    train_seconds = round(sum(seconds), 2)
    model = healed.model.eval()
    results["lora (after healing)"] = ppl()
    print(results, flush=True)

    m = healed.metrics
    write_json(args.out, {
        **provenance(),
        "model": "SmolLM2-135M-Instruct (embedded GGUF Q4_1, dequantized to float32)",
        "depth": f"removed layers {REMOVED} (fixed, not scored)",
        "wanda": {"pattern": s.name, "modules": list(s.modules), "samples": s.samples, "seq_len": s.seq_len,
                  "sparsity_all_modules": sparsity_all},
        "lora": {**{k: v for k, v in dataclasses.asdict(p).items() if k != "enabled"}, "seed": seed},
        "train_text": "wikitext2/valid_tokens.txt",
        "perplexity": {"text": "wikitext2/test_rows.json joined by blank lines", "seq_len": 512,
                       "windows": len(chunks), "dtype": "float32"},
        "ppl": results,
        "first_loss": m["first_loss"], "last_loss": m["last_loss"], "losses": [round(x, 4) for x in healed.losses],
        "train_seconds": train_seconds, "seconds_per_step": round(train_seconds / p.steps, 2),
        "sparsity_targets_before": m["sparsity_before"], "sparsity_targets_after": m["sparsity_after"],
        "device": m["device"], "dtype": m["dtype"],
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "total_s": round(time.perf_counter() - started, 1),
    })


if __name__ == "__main__":
    main()
