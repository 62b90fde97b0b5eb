"""The size-quality frontier over finished sweep experiments: each one's final-checkpoint metrics read back from
`dvc exp show` and git, the Pareto-optimal recipes, a recommendation under a disk budget, a table and plots.

    python -m llmshrink.sweep frontier [--out metrics/frontier.csv] [--budget 0.5]
"""
from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Any, Iterable

import matplotlib.pyplot as plt
import pandas as pd
import yaml

from llmshrink.atomic import atomic_file
from llmshrink.grid import flatten
from llmshrink.plots import save
from llmshrink.report import quality

FINAL, BASE, BENCHMARK = "metrics/eval/eora.json", "metrics/eval/base.json", "metrics/benchmark.json"
SIZE = "disk_bytes_vs_base"


def _run(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def _finished(show: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Baseline commits and their experiments from `dvc exp show --json` that ran to the end (metrics of the
    final checkpoint present), as ExpState dicts; the workspace, queued, running and failed ones are left out."""
    states = []
    for baseline in show:
        if baseline["rev"] != "workspace":
            states.append(baseline)
        for exp_range in baseline.get("experiments") or []:
            executor = exp_range.get("executor")
            if executor is None or executor["state"] == "success":
                states += exp_range["revs"]
    return [s for s in states if "data" in (((s.get("data") or {}).get("metrics") or {}).get(FINAL) or {})]


def _committed(rev: str, path: str) -> dict[str, Any]:
    """A metrics file (or dvc.lock) as committed in `rev`, whole: DVC's own view of metrics drops lists (the 95%
    intervals)."""
    try:
        return yaml.safe_load(_run(["git", "show", f"{rev}:{path}"])) or {}
    except subprocess.CalledProcessError:
        return {}


def _benchmarked(lock: dict[str, Any]) -> bool:
    """Whether the `benchmark` entry of a dvc.lock measured the final checkpoint of that same lock: an experiment
    that did not run the stage (`targets`) carries its baseline's benchmark.json, which measured another model."""
    stages = lock.get("stages") or {}
    final = next((str(o["md5"]) for o in (stages.get("eora") or {}).get("outs", []) if o["path"] == "models/eora"),
                 None)
    measured = [str(d["md5"]) for d in (stages.get("benchmark") or {}).get("deps", []) if d["path"] == "models/eora"]
    return final is not None and measured == [final]


def _evaluation(settings: dict[str, Any]) -> str:
    """The evaluation a row's quality numbers come from: its `eval.*` and `data.*` params, with paths out of the
    repository made absolute (as queued experiments get them)."""
    keys = {k: v for k, v in settings.items() if k.split(".")[0] in ("eval", "data")}
    return json.dumps({k: str((Path.cwd() / v).resolve()) if isinstance(v, str) and v.startswith("../") else v
                       for k, v in keys.items()}, sort_keys=True)


def collect(revs: Iterable[str] = ()) -> pd.DataFrame:
    """One row per finished experiment: `experiment`, the params that differ between experiments, `disk_bytes` and
    its ratio to base, `decode_vs_base` (the final checkpoint's decode speed against base; empty where the
    experiment did not run the benchmark) and every quality metric of the final checkpoint (`ppl_<text>`,
    `qa_exact_match`, `qa_match`, `<task>_acc`, `<task>_acc_norm`) with `_lo` / `_hi` 95% bounds. Left out: experiments
    whose final metrics lack the evaluate layout, and those evaluated otherwise (`eval.*`, `data.*`) than most
    (typically a baseline commit on the default evaluation beside a sweep on a smaller one): their numbers are
    not comparable. `revs`: the baseline commits whose experiments to read (`dvc exp show --rev`); none = HEAD's."""
    rows, settings = [], []
    show = ["dvc", "exp", "show", "--json"] + [arg for rev in revs for arg in ("--rev", rev)]
    try:
        shown = _run(show)
    except subprocess.CalledProcessError as e:
        raise ValueError(f"`{shlex.join(show)}` failed: {' '.join(e.stderr.split())}") from e
    for state in _finished(json.loads(shown)):
        final, base = _committed(state["rev"], FINAL), _committed(state["rev"], BASE)
        if not {"perplexity", "qa", "size"} <= final.keys():
            continue
        fresh = _benchmarked(_committed(state["rev"], "dvc.lock"))
        speed = _committed(state["rev"], BENCHMARK).get("checkpoints", {}).get("eora", {}) if fresh else {}
        disk, base_disk = final["size"]["disk_bytes"], base.get("size", {}).get("disk_bytes")
        row: dict[str, Any] = {"experiment": state["name"] or state["rev"][:7], "rev": state["rev"][:7],
                               "disk_bytes": disk, SIZE: disk / base_disk if base_disk else float("nan"),
                               "decode_vs_base": speed.get("decode_vs_base", float("nan"))}
        for key, (value, (lo, hi)) in quality(final).items():
            row |= {key: value, f"{key}_lo": lo, f"{key}_hi": hi}
        rows.append(row)
        settings.append(flatten(state["data"]["params"].get("params.yaml", {}).get("data", {})))
    evaluations = [_evaluation(s) for s in settings]
    common = max(set(evaluations), key=evaluations.count, default=None)
    for row, evaluation in zip(rows, evaluations):
        if evaluation != common:
            print(f"left out {row['experiment']}: evaluated on other eval/data settings than the other experiments")
    keep = [i for i, e in enumerate(evaluations) if e == common]
    if not keep:
        return pd.DataFrame()
    df = pd.DataFrame([rows[i] for i in keep])
    p = pd.DataFrame([settings[i] for i in keep])
    differing = [c for c in p.columns if p[c].astype(str).nunique(dropna=False) > 1]
    return pd.concat([df[["experiment"]], p[differing], df.drop(columns="experiment")], axis=1)


def quality_columns(df: pd.DataFrame) -> dict[str, str]:
    """Quality metric columns (those with `_lo` / `_hi` bounds) -> "min" for perplexity, else "max"."""
    return {c: "min" if c.startswith("ppl_") else "max" for c in df.columns
            if f"{c}_lo" in df.columns and f"{c}_hi" in df.columns}


def pareto(df: pd.DataFrame, size_col: str, quality_cols: dict[str, str]) -> pd.Series:
    """True for rows no other row beats: smaller-or-equal size and better-or-equal on every quality column,
    strictly better on one (ties are all kept)."""
    bad = {d for d in quality_cols.values() if d not in ("min", "max")}
    if bad:
        raise ValueError(f"quality directions must be 'min' or 'max', not {sorted(bad)}")
    cost = pd.concat([df[size_col], *(df[c] if d == "min" else -df[c] for c, d in quality_cols.items())],
                     axis=1).to_numpy(dtype=float)  # lower is better in every column
    le = (cost[:, None, :] <= cost[None, :, :]).all(axis=2)  # le[j, i]: row j at least as good as row i
    lt = (cost[:, None, :] < cost[None, :, :]).any(axis=2)
    return pd.Series(~(le & lt).any(axis=0), index=df.index, name="pareto")


def recommend(df: pd.DataFrame, budget_ratio: float, primary: str | None = None) -> pd.Series | None:
    """The row best on `primary` (default: the first quality column, a perplexity) among those whose size
    ratio to base is at most `budget_ratio`; None when none fits."""
    directions = quality_columns(df)
    primary = primary or next(iter(directions))
    fits = df[df[SIZE] <= budget_ratio].dropna(subset=[primary])
    if fits.empty:
        return None
    return fits.loc[fits[primary].idxmin() if directions[primary] == "min" else fits[primary].idxmax()]


def markdown(df: pd.DataFrame, budget_ratio: float, best: pd.Series | None) -> str:
    """The Pareto recipes smallest first (value [95% interval]) and the recommendation under the budget."""
    keys = list(quality_columns(df))
    settings = [c for c in df.columns if "." in c]
    lines = ["| experiment | " + " | ".join([*settings, "disk vs base", "decode vs base", *keys]) + " |",
             "|" + " --- |" * (len(settings) + len(keys) + 3)]
    for _, r in df[df["pareto"]].sort_values(SIZE).iterrows():
        cells = [*(str(r[c]) for c in settings), f"{r[SIZE]:.3f}",
                 f"{r['decode_vs_base']:.2f}" if pd.notna(r["decode_vs_base"]) else "-",
                 *(f"{r[k]:.4g} [{r[f'{k}_lo']:.4g}, {r[f'{k}_hi']:.4g}]" for k in keys)]
        lines.append(f"| {r['experiment']} | " + " | ".join(cells) + " |")
    primary = keys[0] if keys else "-"
    verdict = (f"**{best['experiment']}** ({primary} {best[primary]:.4g}, {best[SIZE]:.3f} of base on disk)"
               if best is not None else "none: no finished experiment fits")
    return "\n".join([f"Pareto frontier: {int(df['pareto'].sum())} of {len(df)} experiments are beaten by no other "
                      "(no smaller-or-equal recipe at least as good on every quality metric).", "", *lines, "",
                      f"Recommendation for a budget of {budget_ratio:g} x base disk size, best on `{primary}`: "
                      f"{verdict}."]) + "\n"


def plot(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """`size_vs_<metric>.png` per quality metric: every experiment with its 95% interval against its disk ratio
    to base, and that metric's Pareto front as a line through its labelled recipes."""
    written = []
    for key, direction in quality_columns(df).items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        y, lo, hi = df[key], df[f"{key}_lo"], df[f"{key}_hi"]
        ax.errorbar(df[SIZE], y, yerr=[y - lo, hi - y], fmt="o", capsize=3, alpha=0.6, label="experiment")
        front = df[pareto(df, SIZE, {key: direction})].sort_values(SIZE)
        ax.plot(front[SIZE], front[key], "-", color="C3", drawstyle="steps-post", label="Pareto front")
        for _, r in front.iterrows():
            ax.annotate(r["experiment"], (r[SIZE], r[key]), textcoords="offset points", xytext=(5, 4), fontsize=7)
        if direction == "min":
            ax.set_yscale("log")
        ax.set_xlabel("disk size / base")
        ax.set_ylabel(f"{key} (95% interval)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path = Path(out_dir) / f"size_vs_{key}.png"
        save(fig, path)
        written.append(path)
    return written


def write(out: str | Path, budget_ratio: float, revs: Iterable[str] = (), force: bool = False) -> pd.DataFrame:
    """Collect the experiments (of the baselines `revs`, default HEAD), mark the Pareto frontier, write `<out>`
    (CSV), `<out>.md` and the plots under `<out dir>/plots/frontier`; an `<out>` of more experiments is replaced
    only with `force`."""
    df = collect(revs)
    if df.empty:
        raise SystemExit("no finished experiment with final-checkpoint metrics in `dvc exp show`")
    out = Path(out)
    if not force and out.is_file() and (before := len(pd.read_csv(out))) > len(df):
        raise ValueError(f"{out} holds {before} experiments and `dvc exp show` finds {len(df)} (experiments not "
                         "pulled? `dvc exp pull`); kept as it is: pass --force to replace it")
    df["pareto"] = pareto(df, SIZE, quality_columns(df))
    with atomic_file(out) as f:
        df.to_csv(f, index=False, float_format="%.6g")
    with atomic_file(out.with_suffix(".md")) as f:
        f.write(markdown(df, budget_ratio, recommend(df, budget_ratio)))
    plot(df, out.parent / "plots" / "frontier")
    return df
