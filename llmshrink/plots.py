"""Static images a reader can open offline (matplotlib, PNG): size against every quality metric with 95% intervals
and each point labelled by checkpoint, and the layer skip/repeat study on a log axis."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from llmshrink.report import quality  # noqa: E402


def save(fig: Any, path: Path) -> None:
    """`fig` as a PNG at `path`, written atomically and without a version stamp (reproducible bytes); closes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight", metadata={"Software": None})  # no version stamp: reproducible
    plt.close(fig)
    tmp.replace(path)


def write(df: pd.DataFrame, metrics: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """`size_vs_<metric>.png` for every quality metric of the report: disk MB against the metric, each checkpoint
    a labelled point with its 95% interval; log scale for perplexity."""
    written = []
    for key in quality(next(iter(metrics.values()))):
        fig, ax = plt.subplots(figsize=(6, 4))
        y, lo, hi = df[key], df[f"{key}_lo"], df[f"{key}_hi"]
        ax.errorbar(df["disk_mb"], y, yerr=[y - lo, hi - y], fmt="o", capsize=3)
        for _, r in df.iterrows():
            ax.annotate(r["checkpoint"], (r["disk_mb"], r[key]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if key.startswith("ppl_"):
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("disk MB")
        ax.set_ylabel(f"{key} (95% interval)")
        ax.grid(alpha=0.3)
        path = Path(out_dir) / f"size_vs_{key}.png"
        save(fig, path)
        written.append(path)
    return written


def explore(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Perplexity of each layer skip/repeat configuration as horizontal bars on a log axis."""
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(rows) + 1))
    ax.barh([r["config"] for r in rows], [r["ppl"] for r in rows])
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.invert_yaxis()
    ax.set_xlabel("perplexity (log scale)")
    for i, r in enumerate(rows):
        ax.annotate(f"{r['ppl']:.3g}", (r["ppl"], i), xytext=(3, -3), textcoords="offset points", fontsize=8)
    save(fig, Path(path))
