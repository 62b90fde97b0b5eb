"""Checkpoints side by side on the evaluation's windows: perplexity of each text and KL to the base with 95%
bootstrap intervals, rows read back from committed evaluations, and paired differences over the same windows
(for benchmarks and the recipe search, which score many files outside the DAG exactly as `evaluate` does)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmshrink import hardware, kl, models, stats
from llmshrink.params.evaluation import Eval
from llmshrink.perplexity import text_perplexity


def score(path: str | Path, texts: dict, ref: dict, p: Eval) -> tuple[dict[str, Any], dict[str, Any]]:
    """Bytes, perplexity of each text and KL to base on the reference's text, with intervals; and the per-window
    values for paired differences."""
    model, tokenizer = models.load(path, hardware.resolve_dtype(p.dtype)), models.load_tokenizer(path)
    ref_data, ref_text = ref
    row: dict[str, Any] = {"bytes": models.dir_bytes(path)}
    windows: dict[str, Any] = {}
    for name, t in texts.items():
        also = kl.WindowKL(ref_data) if name == ref_text else None
        r = text_perplexity(model, tokenizer, t["text"], p.seq_len, p.batch_size, p.max_windows, also=also)
        row[f"ppl_{name}"] = [r["ppl"], stats.ppl_ci(r["window_nll"], r["window_tokens"])]
        windows[f"ppl_{name}"] = {"nll": r["window_nll"], "tokens": r["window_tokens"]}
        if also:
            row[f"kl_{name}"] = [sum(also.sums) / sum(r["window_tokens"]), stats.ratio_ci(also.sums, r["window_tokens"])]
            windows[f"kl_{name}"] = {"kl": also.sums, "tokens": r["window_tokens"]}
    return row, windows


def committed(name: str, root: str | Path = ".") -> tuple[dict[str, Any], dict[str, Any]]:
    """A pipeline checkpoint's row from its committed evaluation and per-item results."""
    m = json.loads((Path(root) / "metrics" / "eval" / f"{name}.json").read_text())
    items = json.loads((Path(root) / "results" / "items" / f"{name}.json").read_text())
    row = {"bytes": m["size"]["disk_bytes"]}
    windows: dict[str, Any] = {}
    for text, r in m["perplexity"].items():
        row[f"ppl_{text}"] = [r["ppl"], r["ci95"]]
        windows[f"ppl_{text}"] = items["perplexity"][text]
    for text, r in m.get("kl", {}).items():
        row[f"kl_{text}"] = [r["mean"], r["ci95"]]
        windows[f"kl_{text}"] = items["kl"][text]
    return row, windows


def paired(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per metric: a - b with its paired 95% interval over the same windows."""
    out = {}
    for key, wa in a.items():
        wb = b[key]
        if key.startswith("ppl_"):
            out[key] = stats.paired_ppl_diff(wa["nll"], wb["nll"], wa["tokens"])
        else:
            per_token = lambda w: [k / t for k, t in zip(w["kl"], w["tokens"])]  # noqa: E731
            out[key] = stats.paired_mean_diff(per_token(wa), per_token(wb))
    return out
