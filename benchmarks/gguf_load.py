"""What `evaluate@export` spends loading its GGUF checkpoint, before and after `models.gguf_config`, side by side in
one process: before, every config question (the stage's check, `load`'s check, `is_quantized`, transformers'
own) parsed the whole file again, the vocabulary included; now the config is parsed once and loading reuses it.

    python benchmarks/gguf_load.py --shape embedded                       # CPU: SmolLM2-135M's export
    python benchmarks/gguf_load.py --shape llama-3.2-1b --tokenizer device/tokenizer
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GgufConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmshrink import export, models  # noqa: E402
from llmshrink.benchmark import machine  # noqa: E402


def before(path: Path) -> torch.nn.Module:
    """The load path of the previous commit: three config reads, then transformers' load without a config."""
    name = models.gguf_file(path)
    for _ in range(3):
        AutoConfig.from_pretrained(path, gguf_file=name)
    return AutoModelForCausalLM.from_pretrained(path, gguf_file=name, dtype=torch.float32,
                                                quantization_config=GgufConfig(dequantize=True)).eval()


def after(path: Path) -> torch.nn.Module:
    """The stage's load path now: its config check, then `models.load` (cached config)."""
    models.read_config(path)
    return models.load(path, "float32", torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="embedded", choices=["embedded", *models.SHAPES])
    parser.add_argument("--tokenizer", default="", help="a saved tokenizer folder (random shapes)")
    parser.add_argument("--quick", action="store_true", help="before and after once each (no second `before`)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gguf_load.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "export"
        model, tokenizer = models.load_embedded() if args.shape == "embedded" else \
            models.shaped_model(args.shape, 0, args.tokenizer)
        models.save(model, tokenizer, src, "bfloat16")
        del model
        export.to_gguf(src, out, "q4_0")
        times = {}
        runs = (("before", before), ("after", after)) + ((("before_again", before),) if not args.quick else ())
        for name, load in runs:
            models._gguf_config.cache_clear()
            start = time.perf_counter()
            weights = load(out).state_dict()
            times[name] = round(time.perf_counter() - start, 2)
            if name == "before":
                reference = weights
            assert all(torch.equal(weights[k], reference[k]) for k in reference), "the two paths load different weights"
        result = {"shape": args.shape, "machine": machine(),
                  "load_on": "cpu", "gguf_bytes": models.dir_bytes(out),
                  "seconds": times, "before_over_after": round(min(times["before"], times.get("before_again", 1e9)) /
                                                                times["after"], 2)}
    prior = json.loads(args.out.read_text()) if args.out.exists() else {}
    args.out.write_text(json.dumps({**prior, args.shape: result}, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
