"""Benchmark: structured width pruning + distillation healing against the thesis recipe, on the embedded model.

Builds each recipe of RECIPES from the workspace's `models/base` with the library (no DVC): structured pruning
(`llmshrink.structured`, importance from `data/calibration.txt`), healing by full fine-tuning on `data/finetune.txt`
(`llmshrink.lora`) with distillation from the unpruned base (kd) or, as the control, the LM loss alone (lm), and GPTQ
(`llmshrink.quantize`, params.yaml's gptq section); `gptq_only` quantizes base unpruned. Then measures
every recipe, the thesis recipe (the workspace's `models/eora` and `models/gptq`) and base in one process: bytes on
disk, perplexity of the in-domain (`pydoc`) and out-of-domain (`news`) texts of `data/perplexity.json` with 95%
bootstrap intervals and the paired difference to base, and batch-1 decode speed side by side (interleaved rounds).
Writes benchmarks/results/shrink.json; checkpoints go to benchmarks/work/shrink/ (git-ignored).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from llmshrink import benchmark, hardware, lora, models, quantize, stats, structured
from llmshrink.atomic import atomic_dir, write_json
from llmshrink.calib import token_windows
from llmshrink.params import load, load_seed, read
from llmshrink.params.evaluation import Eval
from llmshrink.params.gptq import Gptq
from llmshrink.params.lora import Lora
from llmshrink.params.width import Structured
from llmshrink.perplexity import text_perplexity

ROOT = Path(__file__).resolve().parents[1]
TEXTS = {"in": "pydoc", "out": "news"}
# structured shares and healing loss of each recipe (kd: distillation only, lm: LM loss only, None: no healing);
# healing settings and GPTQ are shared and recorded in the JSON
RECIPES = {
    "gptq_only": ({}, None),
    "mlp12_kd_gptq": ({"mlp": 0.125}, "kd"),
    "mlp25_kd_gptq": ({"mlp": 0.25}, "kd"),
    "mlp25_lm_gptq": ({"mlp": 0.25}, "lm"),
}
GOAL = {"disk_vs_base": 0.40, "ppl_out_vs_base": 1.3, "decode_vs_base": 1.3}


def build(name: str, raw: dict[str, Any], args: argparse.Namespace, tokenizer: Any, teacher: torch.nn.Module,
          seed: int) -> dict[str, Any]:
    """Structured pruning, healing (full fine-tuning) and GPTQ of `models/base` into `work/<name>/{dense,gptq}`."""
    shares, loss = RECIPES[name]
    work, record = args.work / name, {"params": {}, "seconds": {}}
    calibration = (args.data / "calibration.txt").read_text(encoding="utf-8")
    s = Structured(**{**raw["structured"], **shares})
    dense = args.base
    t0 = time.perf_counter()
    if s.enabled:
        model, shrunk = structured.prune(models.load(args.base, "float32"),
                                         token_windows(tokenizer, calibration, s.samples, s.seq_len, seed), s)
        record["params"]["structured"] = vars(s)
        record.update(shapes={"before": shrunk["before"], "after": shrunk["after"]},
                      params_after_pruning=shrunk["params_after"])
        record["seconds"]["prune"] = time.perf_counter() - t0
        if loss:
            t0 = time.perf_counter()
            p = Lora(**{**raw["lora"], "method": "full", "distill": 1.0 if loss == "kd" else 0.0,
                               "temperature": args.temperature, "lr": args.lr, "steps": args.steps,
                               "batch_size": args.batch_size, "seq_len": args.seq_len, "dataset": "wikitext",
                               "keep_sparsity": False})
            batches = lora.text_batches(tokenizer, (args.data / "finetune.txt").read_text(encoding="utf-8"), p, seed)
            healed = lora.heal(model, batches, p, seed, work / "adapter", teacher=teacher)
            model = healed.model
            record["params"]["heal"] = {k: getattr(p, k) for k in (
                "method", "distill", "temperature", "lr", "steps", "batch_size", "seq_len", "dataset")}
            record["heal_loss"] = {"first": healed.losses[0], "last": healed.losses[-1],
                                   "last5_mean": sum(healed.losses[-5:]) / len(healed.losses[-5:])}
            record["seconds"]["heal"] = time.perf_counter() - t0
        dense = work / "dense"
        with atomic_dir(dense) as tmp:
            models.save(model, tokenizer, tmp, models.saved_dtype(args.base))
    g = Gptq(**{**raw["gptq"], "keep_sparsity": False})
    t0 = time.perf_counter()
    quantize.gptq(dense, work / "gptq", g, calibration, seed)
    record["params"]["gptq"] = {k: getattr(g, k) for k in (*quantize.QUANT_KEYS, "samples", "seq_len")}
    record["seconds"]["gptq"] = time.perf_counter() - t0
    return record


def perplexities(path: Path, tokenizer: Any, texts: dict[str, Any], dtype: str, e: Eval) -> dict[str, Any]:
    """Perplexity of the in- and out-of-domain texts with per-window NLL (for intervals)."""
    model = models.load(path, dtype)
    out = {domain: text_perplexity(model, tokenizer, texts[name]["text"], e.seq_len, e.batch_size, e.max_windows)
           for domain, name in TEXTS.items()}
    del model
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--base", type=Path, default=ROOT / "models" / "base")
    ap.add_argument("--thesis", type=Path, default=ROOT / "models" / "eora", help="the thesis recipe's final checkpoint")
    ap.add_argument("--thesis-gptq", type=Path, default=ROOT / "models" / "gptq")
    ap.add_argument("--data", type=Path, default=ROOT / "data")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "shrink")
    ap.add_argument("--steps", type=int, default=30, help="distillation steps (full fine-tuning)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved benchmark rounds")
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--reuse", action="store_true", help="measure recipes built by an earlier run (work/<name>)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "shrink.json")
    args = ap.parse_args()

    started = time.perf_counter()
    raw = read(ROOT / "params.yaml")
    seed, e = load_seed(ROOT / "params.yaml"), load(Eval, ROOT / "params.yaml")
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    teacher = models.load(args.base, "float32")
    built = {}
    for name in args.recipes:
        record = args.work / name / "build.json"
        if not (args.reuse and record.is_file()):
            write_json(record, build(name, raw, args, tokenizer, teacher, seed))
        built[name] = {**json.loads(record.read_text()), "path": args.work / name / "gptq"}
    del teacher
    thesis = {"prune": {k: raw["prune"][k] for k in ("criterion", "layers")}, "wanda": raw["wanda"]["pattern"],
              "lora": {k: raw["lora"][k] for k in ("steps", "rank", "targets")},
              "gptq": {k: raw["gptq"][k] for k in ("bits", "group_size", "keep_sparsity")}, "eora": raw["eora"]["rank"]}
    recipes = {"base": {"params": {}, "path": args.base},
               "thesis": {"params": thesis, "path": args.thesis},
               "thesis_without_eora": {"params": {k: v for k, v in thesis.items() if k != "eora"},
                                       "path": args.thesis_gptq},
               **built}

    dtype = hardware.resolve_dtype("auto")
    texts = json.loads((args.data / "perplexity.json").read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    ppl = {name: perplexities(r["path"], tokenizer, texts, dtype, e) for name, r in recipes.items()}
    eval_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    speed = benchmark.run({name: r["path"] for name, r in recipes.items()}, dtype, args.rounds, 128, 32, [1], seed)
    bench_s = time.perf_counter() - t0

    base_bytes, rows = models.dir_bytes(args.base), []
    for name, r in recipes.items():
        row = {"name": name, "params": r["params"], "disk_vs_base": models.dir_bytes(r["path"]) / base_bytes}
        for domain, text in TEXTS.items():
            mine, ref = ppl[name][domain], ppl["base"][domain]
            diff, ci = stats.paired_ppl_diff(mine["window_nll"], ref["window_nll"], mine["window_tokens"], seed=seed)
            row[f"ppl_{domain}_vs_base"] = mine["ppl"] / ref["ppl"]
            row[f"ppl_{domain}"] = {"text": text, "ppl": mine["ppl"], "ci95": stats.ppl_ci(
                mine["window_nll"], mine["window_tokens"], seed=seed), "diff_vs_base": diff, "diff_ci95": ci}
        row["decode_vs_base"] = speed["checkpoints"][name]["decode_vs_base"]
        row["decode_tok_s"] = speed["checkpoints"][name]["spread"]["decode_tok_s"]
        row["disk_bytes"] = models.dir_bytes(r["path"])
        row["meets_goal"] = (row["disk_vs_base"] <= GOAL["disk_vs_base"] and row["ppl_out_vs_base"] <= GOAL[
            "ppl_out_vs_base"] and row["decode_vs_base"] >= GOAL["decode_vs_base"])
        row.update({k: v for k, v in r.items() if k not in ("params", "path")})
        rows.append(row)
        print(f"{name}: disk {row['disk_vs_base']:.3f}, ppl in {row['ppl_in_vs_base']:.2f}x, "
              f"out {row['ppl_out_vs_base']:.2f}x, decode {row['decode_vs_base']:.2f}x", flush=True)
    embedding = embedding_bytes(args.base)
    write_json(args.out, {
        **benchmark.provenance(),
        "model": "SmolLM2-135M-Instruct (embedded), models/base of the workspace (bfloat16)",
        "goal": GOAL,
        "settings": {"eval_dtype": dtype, "perplexity": {"seq_len": e.seq_len, "max_windows": e.max_windows,
                                                         "texts": TEXTS},
                     "benchmark": {**speed["settings"], "baseline": "base"},
                     "tied_embedding_bytes_vs_base": embedding / base_bytes},
        "recipes": rows,
        "seconds": {"build": {n: b["seconds"] for n, b in built.items()}, "evaluate": eval_s, "benchmark": bench_s,
                    "total": time.perf_counter() - started, "reused_builds": args.reuse},
    })


def embedding_bytes(path: Path) -> int:
    """Bytes of the (tied) token embedding as stored in the checkpoint `path`: GPTQModel keeps it in 16 bits."""
    config = models.read_config(path)
    return config["vocab_size"] * config["hidden_size"] * torch.finfo(hardware.DTYPES[models.saved_dtype(path)]).bits // 8


if __name__ == "__main__":
    main()
