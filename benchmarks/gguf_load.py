"""What a stage that scores the GGUF export (`evaluate@export`, `benchmark`) spends loading it: its config
check, tokenizer and weights, three ways side by side in one process, alternating, fastest of `--rounds`:

- `transformers`: transformers' own API, nothing shared: the file is parsed four times, for the config check,
  the tokenizer, and the model's config and weights; gguf's tensor-name map is rebuilt for every submodule of
  the model;
- `config_cached` (commit 04a9af9): the config parsed once per process and passed to the model; the tokenizer
  and the weights still parse the file;
- `parsed_once` (`llmshrink/gguf_files.py` now): one parse per process and file (`gguf_reader`) serves config, tokenizer
  and weights, and the name map is built once.

Identical weights and tokens are asserted.

    python benchmarks/gguf_load.py --shape embedded                       # CPU: SmolLM2-135M's export
    python benchmarks/gguf_load.py --shape llama-3.2-3b --tokenizer device/tokenizer --rounds 1
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmshrink import export, gguf_files, models, sources  # noqa: E402
from llmshrink.benchmark import PROVENANCE, provenance  # noqa: E402

TEXT = "The export is scored with the tokenizer inside its file."


def load_with_transformers(path: Path, share_config: bool = False) -> tuple[Any, torch.nn.Module]:
    """transformers' own API; with `share_config`, the config of the check is passed on to the model."""
    name = gguf_files.gguf_file(path)
    config = AutoConfig.from_pretrained(path, gguf_file=name)
    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=name)
    shared = {"config": config} if share_config else {}
    return tokenizer, AutoModelForCausalLM.from_pretrained(path, gguf_file=name, dtype=torch.float32, **shared,
                                                           quantization_config=GgufConfig(dequantize=True)).eval()


def load_parsed_once(path: Path) -> tuple[Any, torch.nn.Module]:
    models.read_config(path)
    return models.load_tokenizer(path), models.load(path, "float32", torch.device("cpu"))


PATHS = {"transformers": load_with_transformers,
         "config_cached": functools.partial(load_with_transformers, share_config=True),
         "parsed_once": load_parsed_once}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="embedded", choices=["embedded", *sources.SHAPES])
    parser.add_argument("--tokenizer", default="", help="a saved tokenizer folder (random shapes)")
    parser.add_argument("--rounds", type=int, default=2, help="each path this many times, alternating")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gguf_load.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "export"
        model, tokenizer = sources.load_embedded() if args.shape == "embedded" else \
            sources.shaped_model(args.shape, 0, args.tokenizer)
        models.save(model, tokenizer, src, "bfloat16")
        del model
        export.to_gguf(src, out, "q4_0")
        times: dict[str, list[float]] = {name: [] for name in PATHS}
        reference = None
        for _ in range(args.rounds):
            for name, load in PATHS.items():
                gguf_files._gguf_config.cache_clear(), gguf_files._gguf_reader.cache_clear()
                start = time.perf_counter()
                tokenizer, model = load(out)
                times[name].append(round(time.perf_counter() - start, 2))
                loaded = (tokenizer(TEXT).input_ids, model.state_dict())
                reference = reference or loaded
                assert loaded[0] == reference[0], f"{name} loads another tokenizer"
                assert all(torch.equal(t, reference[1][k]) for k, t in loaded[1].items()), f"{name}: other weights"
                del tokenizer, model, loaded
        best = {name: min(t) for name, t in times.items()}
        result = {**provenance(), "shape": args.shape, "load_on": "cpu", "gguf_bytes": models.dir_bytes(out),
                  "what": "config check + tokenizer + weights", "seconds": times, "fastest": best,
                  "transformers_over_parsed_once": round(best["transformers"] / best["parsed_once"], 2),
                  "config_cached_over_parsed_once": round(best["config_cached"] / best["parsed_once"], 2)}
    prior = json.loads(args.out.read_text()) if args.out.exists() else {}
    prior.pop("provenance_note", None)  # the retroactive note of the entries before provenance() was recorded
    args.out.write_text(json.dumps({**prior, **{k: result[k] for k in PROVENANCE}, args.shape: result}, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
