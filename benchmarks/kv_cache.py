"""Benchmark: the kv_cache stage's measurement over a grid of cache configurations and context lengths on the final
dense checkpoint (default models/lora of this checkout), long-context perplexity on the out-of-domain text, cache
bytes, peak memory and decode tokens/s against bf16; with llama-bench built, llama.cpp's own cache types on the
GGUF export too (decode tokens/s at depth, flash attention on, which quantized V caches need).

    python benchmarks/kv_cache.py [--profile profiles/kv_full.txt] [--contexts 2048 8192] [--windows 1]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from dvc.utils.hydra import apply_overrides
from transformers import AutoTokenizer

from llmshrink import gguf_files, hardware, kv_cache, kv_study, llamacpp, models
from llmshrink.atomic import atomic_file, write_json
from llmshrink.benchmark import provenance
from llmshrink.params import load
from llmshrink.params.evaluation import Eval
from llmshrink.params.kv import Kv
from llmshrink.perplexity import token_ids, windows

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "kv_cache.json"
GGUF_TYPES = ("f16", "q8_0", "q4_0")  # llama.cpp's --cache-type-k / -v


def kv_params(profile: Path | None) -> Kv:
    """The `kv` section of params.yaml with the profile's `-S` overrides applied, as `dvc exp run -S` applies them."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        shutil.copy(ROOT / "params.yaml", path)
        if profile:
            apply_overrides(str(path), profile.read_text(encoding="utf-8").split())
        return load(Kv, path)


def llama_bench(gguf: Path, depths: list[int], tokens: int, threads: int) -> list[dict]:
    """Decode tokens/s of the GGUF file per cache type (K and V alike) at each depth (tokens already in the
    cache), one llama-bench run per cache type; [] when llama-bench is not built."""
    binary = llamacpp.tool("llama-bench")
    if not binary.is_file():
        print(llamacpp.SKIPPED)
        return []
    rows = []
    for cache in GGUF_TYPES:
        cmd = [str(binary), "-m", str(gguf), "-p", "0", "-n", str(tokens), "-d", ",".join(map(str, depths)),
               "-ctk", cache, "-ctv", cache, "-fa", "on", "-t", str(threads), "-r", "1", "-o", "json"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            rows.append({"cache_type": cache, "error": done.stderr.strip().splitlines()[-1:]})
            continue
        for r in json.loads(done.stdout):
            rows.append({"cache_type": cache, "depth": r.get("n_depth"), "decode_tok_s": r["avg_ts"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "lora")
    parser.add_argument("--texts", type=Path, default=ROOT / "data" / "perplexity.json")
    parser.add_argument("--gguf", type=Path, default=ROOT / "models" / "export",
                        help="GGUF export folder for llama-bench; a missing folder skips it")
    parser.add_argument("--profile", type=Path, default=ROOT / "profiles" / "kv_full.txt")
    parser.add_argument("--contexts", type=int, nargs="*", help="override the profile's kv.contexts")
    parser.add_argument("--windows", type=int, help="override the profile's kv.windows")
    parser.add_argument("--configs", nargs="*", help="only these configurations (the baseline always)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    p = kv_params(args.profile)
    p = dataclasses.replace(p, contexts=args.contexts or p.contexts, windows=args.windows or p.windows,
                            configs={n: c for n, c in p.configs.items()
                                     if not args.configs or n in args.configs or n == p.baseline})
    model_config = models.read_config(args.model)
    configs = kv_cache.configs(p, model_config)
    texts = json.loads(args.texts.read_text(encoding="utf-8"))
    name, text = next((n, t["text"]) for n, t in texts.items() if t["domain"] == "out")
    ids = token_ids(AutoTokenizer.from_pretrained(args.model), text)
    by_context = {c: windows(ids, c, p.windows) for c in p.contexts}
    dtype = hardware.resolve_dtype(load(Eval, ROOT / "params.yaml").dtype)
    model = models.load(args.model, dtype)

    start = time.perf_counter()
    raw = kv_study.study(model, configs, by_context, p.chunk, p.decode_tokens)
    deploy = p.context or model_config["max_position_embeddings"]
    summary = kv_study.summarize(raw, configs, p.baseline, model_config, deploy, seed=0)
    gguf = gguf_files.gguf_file(args.gguf) if args.gguf.is_dir() else None
    bench = llama_bench(args.gguf / gguf, [0, *p.contexts], p.decode_tokens * 4, 2) if gguf else []
    table = kv_study.markdown(summary, p.baseline)
    write_json(args.out, {
        **provenance(),
        "model": f"{args.model} ({model_config['num_hidden_layers']} layers, {dtype})",
        "text": f"{name} (out-of-domain), {p.windows} window(s) per context, chunks of {p.chunk} tokens",
        "device": hardware.name(model.device), "seconds_total": time.perf_counter() - start,
        "kv": dataclasses.asdict(p), "configs": summary, "llama_bench": bench})
    with atomic_file(args.out.with_suffix(".md")) as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
