"""Report: one row per checkpoint (quality with 95% intervals, size, side-by-side speed, ratios to base) and the
paired difference of every quality metric against `base` and against the checkpoint it was made from, with its interval;
differences whose interval contains 0 are marked not significant."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmshrink import stats
from llmshrink.atomic import atomic_file


def read(eval_dir: str | Path, items_dir: str | Path, order: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics and per-item results of the checkpoints of `order` that have both, in that order."""
    names = [n for n in order if (Path(eval_dir) / f"{n}.json").is_file() and (Path(items_dir) / f"{n}.json").is_file()]
    load = lambda d, n: json.loads((Path(d) / f"{n}.json").read_text(encoding="utf-8"))  # noqa: E731
    return {n: load(eval_dir, n) for n in names}, {n: load(items_dir, n) for n in names}


def quality(metrics: dict[str, Any]) -> dict[str, tuple[float, list[float]]]:
    """Each quality metric of one checkpoint as name -> (value, ci95): `kl_<text>` (KL to base per token),
    `ppl_<text>`, `qa_exact_match`, `qa_match`, `<task>_acc`, `<task>_acc_norm`."""
    out = {f"kl_{n}": (m["mean"], m["ci95"]) for n, m in metrics.get("kl", {}).items()}
    out |= {f"ppl_{n}": (m["ppl"], m["ci95"]) for n, m in metrics["perplexity"].items()}
    out["qa_exact_match"] = (metrics["qa"]["exact_match"], metrics["qa"]["ci95"])
    out["qa_match"] = (metrics["qa"]["match"], metrics["qa"]["match_ci95"])
    for task, m in metrics.get("choice", {}).items():
        out[f"{task}_acc"] = (m["acc"], m["ci95"])
        out[f"{task}_acc_norm"] = (m["acc_norm"], m["acc_norm_ci95"])
    return out


def summary(metrics: dict[str, Any], speed: dict[str, Any], cache_bytes: dict[str, int] | None = None) -> pd.DataFrame:
    """One row per checkpoint: size, every quality metric with `_lo` / `_hi` bounds and `_vs_base` ratio, and
    tokens/s from the side-by-side benchmark with ratios to base; with `cache_bytes` (checkpoint -> bytes of its
    KV cache at the deployment context) also `kv_cache_mb` and `deploy_mb`, the weights on disk plus that cache."""
    rows = []
    for name, m in metrics.items():
        row: dict[str, Any] = {"checkpoint": name, **m["size"], "disk_mb": m["size"]["disk_bytes"] / 1e6}
        if cache_bytes and name in cache_bytes:
            row |= {"kv_cache_mb": cache_bytes[name] / 1e6, "deploy_mb": (m["size"]["disk_bytes"] + cache_bytes[name]) / 1e6}
        for key, (value, (lo, hi)) in quality(m).items():
            row |= {key: value, f"{key}_lo": lo, f"{key}_hi": hi}
        s = speed.get(name, {})
        row |= {k: v for k, v in s.items() if k.endswith(("tok_s", "vs_base", "tok_s_b8", "vs_base_b8")) or k == "peak_mem_bytes"}
        rows.append(row)
    df = pd.DataFrame(rows)
    if "base" in metrics:
        base = df[df["checkpoint"] == "base"].iloc[0]
        for col in ["disk_bytes", "params_nonzero", *(k for k in quality(metrics["base"]))]:
            df[f"{col}_vs_base"] = df[col] / base[col] if base[col] else float("nan")
    return df


def paired(a: dict[str, Any], b: dict[str, Any], seed: int = 0) -> dict[str, tuple[float, list[float]]]:
    """Metric -> (a - b, paired 95% interval) over the items both checkpoints were scored on."""
    out = {}
    for text, ia in a.get("kl", {}).items():
        ib = b.get("kl", {}).get(text)
        if ib and ib["tokens"] == ia["tokens"]:  # paired difference of the per-token mean over the same windows
            ratio = lambda kl: np.asarray(kl) / np.sum(ia["tokens"]) * len(ia["tokens"])  # noqa: E731
            out[f"kl_{text}"] = stats.paired_mean_diff(ratio(ia["kl"]), ratio(ib["kl"]), seed=seed)
    for text, ia in a["perplexity"].items():
        ib = b["perplexity"].get(text)
        if ib and ib["tokens"] == ia["tokens"]:
            out[f"ppl_{text}"] = stats.paired_ppl_diff(ia["nll"], ib["nll"], ia["tokens"], seed=seed)
    for key in ("exact_match", "match"):
        if len(a["qa"][key]) == len(b["qa"][key]):
            out[f"qa_{key}"] = stats.paired_mean_diff(a["qa"][key], b["qa"][key], seed=seed)
    for task, ia in a.get("choice", {}).items():
        ib = b.get("choice", {}).get(task)
        for key in ("acc", "acc_norm"):
            if ib and len(ib[key]) == len(ia[key]):
                out[f"{task}_{key}"] = stats.paired_mean_diff(ia[key], ib[key], seed=seed)
    return out


def lineage(pairs: list[str]) -> dict[str, str]:
    """`["export=lora", ...]` as {checkpoint: the checkpoint it is made from}."""
    if bad := [p for p in pairs if p.count("=") != 1 or "" in p.split("=")]:
        raise ValueError(f"--made_from {bad}: each must be CHECKPOINT=SOURCE, e.g. export=lora")
    return dict(p.split("=") for p in pairs)


def comparisons(items: dict[str, Any], baselines: list[str] = (), made_from: dict[str, str] | None = None,
                seed: int = 0) -> pd.DataFrame:
    """Long table, per metric: difference, interval and whether the interval excludes 0, of each checkpoint
    against `base`, against its previous step in the recipe (the checkpoints before the first baseline): the one
    it is made from (`made_from`), else the one before it; and, unless it is one, against each of the `baselines`."""
    names, made_from = list(items), made_from or {}
    recipe = names[: min((names.index(b) for b in baselines if b in names), default=len(names))]
    rows = []
    for i, name in enumerate(names[1:], 1):
        previous = [made_from.get(name, names[i - 1])] if name in recipe else []
        against = dict.fromkeys(["base", *previous, *([] if name in baselines else baselines)])
        for ref in (r for r in against if r in items and r != name):
            for metric, (diff, (lo, hi)) in paired(items[name], items[ref], seed).items():
                rows.append({"checkpoint": name, "against": ref, "metric": metric, "diff": diff, "lo": lo, "hi": hi,
                             "significant": stats.significant([lo, hi])})
    return pd.DataFrame(rows, columns=["checkpoint", "against", "metric", "diff", "lo", "hi", "significant"])


def against_baselines(df: pd.DataFrame, comp: pd.DataFrame, baselines: list[str], keys: list[str]) -> list[str]:
    """Markdown lines: every checkpoint against every baseline on size and on the metrics `keys` (the first a KL),
    with a verdict (`beats` only at no more bytes with a significantly lower KL)."""
    size = df.set_index("checkpoint")["disk_bytes"]
    rows = comp[comp["against"].isin(baselines) & comp["metric"].isin(keys)]
    if rows.empty:
        return []
    lines = ["", "Against the baselines (what a user would make instead from the untouched base; paired 95% "
             "intervals; a checkpoint beats a baseline when it has no more bytes and a significantly lower KL):", "",
             "| checkpoint | baseline | bytes vs baseline | " + " | ".join(f"Δ {k} [95%]" for k in keys) + " | verdict |",
             "|" + " --- |" * (len(keys) + 4)]
    for (name, ref), group in rows.groupby(["checkpoint", "against"], sort=False):
        by = group.set_index("metric")
        cells = [f"{by.loc[k, 'diff']:+.4g} [{by.loc[k, 'lo']:+.4g}, {by.loc[k, 'hi']:+.4g}]" if k in by.index else "-"
                 for k in keys]
        ratio = size[name] / size[ref]
        kl = by.loc[keys[0]] if keys[0].startswith("kl_") and keys[0] in by.index else None
        verdict = ("n.s." if kl is None or not kl["significant"] else
                   f"{ref} better" if kl["diff"] > 0 else "beats" if ratio <= 1 else "better, but larger")
        lines.append(f"| {name} | {ref} | {ratio:.3f} | " + " | ".join(cells) + f" | {verdict} |")
    return lines


# model.source -> what the summary must say about the base's weights before any number
BASE_NOTES = {"gemma3-270m": "Base: Gemma 3 270M dequantized from its Q4_K_M GGUF file (model.source=gemma3-270m): "
                             "its weights lie on a Q4_K grid, so every 4-bit quantizer here rounds them a second time."}


def markdown(df: pd.DataFrame, comp: pd.DataFrame, metrics: dict[str, Any], baselines: list[str] = (),
             source: str = "embedded", deployment: str = "") -> str:
    """The summary as Markdown: the note on the base model's source (`BASE_NOTES`, if any), one row per checkpoint
    (value [95% interval]), the checkpoints against the baselines, and the paired differences, `n.s.` where the
    interval contains 0; with a `deploy_mb` column, its meaning (`deployment`, e.g. the cache and context) below
    the table."""
    first = next(iter(metrics.values()))
    keys = list(quality(first))
    deploy = "deploy_mb" in df
    lines = [BASE_NOTES[source], ""] if source in BASE_NOTES else []
    lines += ["| checkpoint | disk MB | disk vs base | " + ("deploy MB | " if deploy else "") + " | ".join(keys)
              + " | decode vs base |", "|" + " --- |" * (len(keys) + 4 + deploy)]
    for _, r in df.iterrows():
        cells = [f"{r[k]:.4g} [{r[f'{k}_lo']:.4g}, {r[f'{k}_hi']:.4g}]" for k in keys]
        decode = f"{r['decode_vs_base']:.2f}" if "decode_vs_base" in r and pd.notna(r["decode_vs_base"]) else "-"
        memory = (f"{r['deploy_mb']:.1f} | " if pd.notna(r["deploy_mb"]) else "- | ") if deploy else ""
        lines.append(f"| {r['checkpoint']} | {r['disk_mb']:.1f} | {r['disk_bytes_vs_base']:.3f} | {memory}"
                     + " | ".join(cells) + f" | {decode} |")
    if deploy:
        lines += ["", f"deploy MB: the weights on disk plus the KV cache at batch 1 ({deployment})."]
    texts = "; ".join(f"`ppl_{n}`: {m['dataset']} ({m['domain']}-domain, {m['tokens']:,} tokens, {m['protocol']})"
                      for n, m in first["perplexity"].items())
    headline = [f"kl_{n}" for n in first.get("kl", {})] + \
        [f"ppl_{n}" for n, m in first["perplexity"].items() if m["domain"] == "out"]
    lines += against_baselines(df, comp, list(baselines), headline)
    lines += ["", f"Perplexity texts: {texts}.", "",
              "Paired differences (checkpoint − reference, 95% bootstrap interval over the same items; "
              "n.s. = the interval contains 0):", "",
              "| checkpoint | against | metric | difference | 95% interval | |", "| --- | --- | --- | --- | --- | --- |"]
    for _, c in comp.iterrows():
        lines.append(f"| {c['checkpoint']} | {c['against']} | {c['metric']} | {c['diff']:+.4g} | "
                     f"[{c['lo']:+.4g}, {c['hi']:+.4g}] | {'' if c['significant'] else 'n.s.'} |")
    return "\n".join(lines) + "\n"


def write(df: pd.DataFrame, comp: pd.DataFrame, md: str, csv_path: str | Path, comp_path: str | Path,
          md_path: str | Path) -> None:
    """The three files, atomically (floats in the CSVs to 6 significant digits, so reruns compare equal)."""
    for frame, path in ((df, csv_path), (comp, comp_path)):
        with atomic_file(path) as f:
            frame.to_csv(f, index=False, float_format="%.6g")
    with atomic_file(md_path) as f:
        f.write(md)
