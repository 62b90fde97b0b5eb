"""Summary table of the evaluated checkpoints, one row each in pipeline order, with ratios to base."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

# ratio column -> metric column it divides by the base checkpoint's value
RATIOS = {
    "ppl_vs_base": "ppl",
    "exact_match_vs_base": "exact_match",
    "match_vs_base": "match",
    "params_vs_base": "params",
    "params_nonzero_vs_base": "params_nonzero",
    "disk_vs_base": "disk_bytes",
    "prefill_vs_base": "prefill_tok_s",
    "decode_vs_base": "decode_tok_s",
}


def read_metrics(eval_dir: str | Path, order: list[str], benchmark: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The `<name>.json` files of `eval_dir` that exist, the checkpoints of `order` first in that order, each with
    its tokens/s and peak memory from the side-by-side benchmark (section `speed`) when it has them."""
    files = {f.stem: f for f in Path(eval_dir).glob("*.json")}
    names = [n for n in order if n in files] + sorted(set(files) - set(order))
    metrics = {n: json.loads(files[n].read_text(encoding="utf-8")) for n in names}
    speed = json.loads(Path(benchmark).read_text(encoding="utf-8"))["checkpoints"] if benchmark else {}
    for name, m in metrics.items():
        if name in speed:
            m["speed"] = {k: v for k, v in speed[name].items() if k.endswith("tok_s") or k == "peak_mem_bytes"}
    return metrics


def flatten(metrics: dict[str, Any]) -> dict[str, Any]:
    """Scalar leaves keyed by their own name (`ppl`, `exact_match`, ...); a name found in two sections
    becomes `section_name` (`triviaqa_n`). Lists and other non-scalars are left out."""
    leaves = [(section, k, v) for section, values in metrics.items() if isinstance(values, dict)
              for k, v in values.items() if v is None or isinstance(v, (int, float, str))]
    leaves += [("", k, v) for k, v in metrics.items() if isinstance(v, (int, float, str))]
    counts: dict[str, int] = {}
    for _, k, _ in leaves:
        counts[k] = counts.get(k, 0) + 1
    return {(k if counts[k] == 1 or not section else f"{section}_{k}"): v for section, k, v in leaves}


def summary(metrics: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per checkpoint (column `checkpoint`): flattened metrics, `disk_mb` (1e6 bytes) and ratios
    to the base checkpoint (NaN without a base row or where the base value is 0)."""
    df = pd.DataFrame([{"checkpoint": name, **flatten(m)} for name, m in metrics.items()])
    df["disk_mb"] = df["disk_bytes"] / 1e6
    base = df[df["checkpoint"] == "base"]
    for ratio, col in RATIOS.items():
        if col not in df:
            continue
        ref = float(base[col].iloc[0]) if len(base) and col in df and pd.notna(base[col].iloc[0]) else 0.0
        df[ratio] = df[col] / ref if ref else math.nan
    return df


def write(df: pd.DataFrame, csv_path: str | Path, md_path: str | Path) -> None:
    """The table as CSV and as a Markdown table (floats to 4 significant digits), both atomically."""
    from llmshrink.atomic import atomic_file

    with atomic_file(csv_path) as f:
        df.to_csv(f, index=False)
    with atomic_file(md_path) as f:
        f.write(df.to_markdown(index=False, floatfmt=".4g") + "\n")
