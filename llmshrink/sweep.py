"""Recipe sweeps: a grid of params (`sweeps/<name>.yaml`) queued as DVC experiments in DVC's own queue, and the
size-quality frontier over the finished experiments.

    python -m llmshrink.sweep queue sweeps/thesis.yaml [-j N] [--start] [--dry-run]
    python -m llmshrink.sweep frontier [--out metrics/frontier.csv] [--budget 0.5]
    python -m llmshrink.sweep push-run-cache [-r REMOTE]

A grid: `params` maps a dotted param to its list of values (the product is swept), `exclude` lists partial
assignments (a combination matching every key of one is dropped), `fixed` maps params set in every experiment.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import matplotlib.pyplot as plt
import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException

from llmshrink.atomic import atomic_file
from llmshrink.params import integer, read
from llmshrink.params.sections import SECTIONS
from llmshrink.plots import _save
from llmshrink.report import quality

GRID_KEYS = ("params", "exclude", "fixed", "targets")
KEY = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*")
# name prefix of a swept param's value; others use the last part of their dotted name
LABELS = {"prune.layers": "L", "wanda.enabled": "wanda", "wanda.pattern": "w", "lora.dataset": "",
          "gptq.bits": "b", "eora.enabled": "eora"}
FINAL, BASE, BENCHMARK = "metrics/eval/eora.json", "metrics/eval/base.json", "metrics/benchmark.json"
SIZE = "disk_bytes_vs_base"


# --- grid -----------------------------------------------------------------------------------------------------

def _same(a: Any, b: Any) -> bool:
    """Equal as params: `true` is not `1`."""
    return a == b and isinstance(a, bool) is isinstance(b, bool)


def _check_value(where: str, value: Any) -> None:
    scalar = (str, int, float, bool, type(None))
    if not isinstance(value, scalar) and not (isinstance(value, list) and all(isinstance(v, scalar) for v in value)):
        raise ValueError(f"{where}={value!r}: a value must be a string, number, boolean, null or list of those")


def _check(grid: Any) -> None:
    """A ValueError naming the first malformed part of `grid`."""
    if not isinstance(grid, dict):
        raise ValueError(f"a sweep grid must be a mapping with keys {list(GRID_KEYS)}, not {type(grid).__name__}")
    unknown = [k for k in grid if k not in GRID_KEYS]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a grid key; allowed {list(GRID_KEYS)}")
    axes = grid.get("params")
    if not isinstance(axes, dict) or not axes:
        raise ValueError("params must be a non-empty mapping of dotted param -> list of values")
    for key, values in axes.items():
        if not isinstance(key, str) or not KEY.fullmatch(key):
            raise ValueError(f"params.{key}: not a dotted param name like prune.layers")
        if not isinstance(values, list) or not values:
            raise ValueError(f"params.{key}={values!r} must be a non-empty list of values")
        for i, v in enumerate(values):
            _check_value(f"params.{key}", v)
            if any(_same(v, w) for w in values[:i]):
                raise ValueError(f"params.{key} lists {v!r} twice")
    exclude = grid.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(e, dict) and e for e in exclude):
        raise ValueError("exclude must be a list of non-empty mappings of param -> value")
    for i, e in enumerate(exclude):
        for key, value in e.items():
            if key not in axes:
                raise ValueError(f"exclude[{i}].{key} is not a swept param; params has {list(axes)}")
            if not any(_same(value, v) for v in axes[key]):
                raise ValueError(f"exclude[{i}].{key}={value!r} is not among params.{key} {axes[key]}")
    fixed = grid.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ValueError("fixed must be a mapping of dotted param -> value")
    for key, value in fixed.items():
        if not isinstance(key, str) or not KEY.fullmatch(key):
            raise ValueError(f"fixed.{key}: not a dotted param name like prune.layers")
        if key in axes:
            raise ValueError(f"fixed.{key} is also swept in params")
        _check_value(f"fixed.{key}", value)
    targets = grid.get("targets") or []
    if not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"targets={targets!r} must be a list of dvc.yaml stage names, e.g. [evaluate@eora, benchmark]")


def expand(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of `params` (first key slowest, last fastest) except the excluded, each with `fixed`."""
    _check(grid)
    axes = grid["params"]
    combos = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    kept = [c for c in combos if not any(all(_same(c[k], v) for k, v in e.items()) for e in grid.get("exclude") or [])]
    return [{**c, **(grid.get("fixed") or {})} for c in kept]


@functools.cache
def _parser() -> OverridesParser:
    return OverridesParser.create()


def _identical(a: Any, b: Any) -> bool:
    """Equal and of the same type, element by element for lists."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_identical, a, b))
    return type(a) is type(b) and a == b


def _parses_to(text: str, value: Any) -> bool:
    """Whether DVC (Hydra's override grammar) reads `k=<text>` as exactly `value`, not a sweep."""
    try:
        override = _parser().parse_overrides([f"k={text}"])[0]
    except OverrideParseException:
        return False
    return not override.is_sweep_override() and _identical(override.value(), value)


def render(value: Any) -> str:
    """`value` as the right-hand side of `dvc exp run -S key=<value>`: `2:4` stays a string, `true`/`false`,
    `null`, numbers as written; strings DVC would read otherwise (`'4'`, `'a,b'`) are quoted."""
    if isinstance(value, list):
        text = "[" + ",".join(render(v) for v in value) + "]"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, (int, float)):
        text = repr(value)
    else:
        text = value if _parses_to(value, value) else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if not _parses_to(text, value):
        raise ValueError(f"{value!r} has no -S rendering that DVC reads back unchanged")
    return text


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "T" if value else "F"
    return "none" if value is None else str(value)


def name(assignment: dict[str, Any], varying: Iterable[str]) -> str:
    """A readable experiment name from the values of the `varying` params, e.g. `L2-w1_8-wikitext-b4-eoraT`;
    only letters, digits, `_` and `-` (a valid Git ref name, as DVC requires). Where `<section>.enabled` varies
    with other params of its section, `true` is implied and `false` reads `<section>off` in place of them all."""
    varying = list(varying)
    parts = []
    for key in varying:
        section = key.split(".")[0]
        switch = f"{section}.enabled"
        grouped = switch in varying and any(k != switch and k.split(".")[0] == section for k in varying)
        if grouped and assignment[switch] is False:
            part = f"{section}off" if key == switch else ""
        elif grouped and key == switch:
            part = ""
        else:
            part = LABELS.get(key, key.rsplit(".", 1)[-1]) + _text(assignment[key])
        parts += [re.sub(r"[^A-Za-z0-9_]+", "_", part)] if part else []
    return "-".join(parts)


def experiments(grid: dict[str, Any], fallback: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, assignment) of every combination, names from the swept params with more than one value;
    `fallback` names the one experiment of a grid that varies nothing."""
    _check(grid)
    varying = [k for k, v in grid["params"].items() if len(v) > 1]
    combos = expand(grid)
    names = [name(c, varying) or fallback for c in combos]
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice:
        raise ValueError(f"two combinations get the experiment name {twice!r}; exclude all but one "
                         "(a disabled section's other params do not count) or make their values differ in text")
    return list(zip(names, combos))


def command(exp_name: str, assignment: dict[str, Any], targets: Iterable[str] = ()) -> list[str]:
    """`dvc exp run --queue --name <exp_name> -S k=v ... [targets]` (no targets: the whole pipeline)."""
    return ["dvc", "exp", "run", "--queue", "--name", exp_name,
            *(arg for k, v in assignment.items() for arg in ("-S", f"{k}={render(v)}")), *targets]


def validate(assignment: dict[str, Any], defaults: dict[str, Any], label: str) -> None:
    """`assignment` applied to the params file `defaults` passes the typed schema of every section it touches;
    else a ValueError naming the experiment `label` and the param."""
    merged = json.loads(json.dumps(defaults))
    for key, value in assignment.items():
        *path, leaf = key.split(".")
        node = merged
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            raise ValueError(f"{label}: {key} is not a param of params.yaml")
        node[leaf] = value
    for section in sorted({k.split(".")[0] for k in assignment}):
        try:
            if section == "seed":
                integer("seed", merged["seed"], 0)
            else:
                SECTIONS[section](**merged[section])
        except (ValueError, TypeError) as e:
            raise ValueError(f"{label}: {e}") from e


def outside_paths(defaults: dict[str, Any], root: Path) -> dict[str, str]:
    """Params whose value is a relative path out of the repository (`../shared/...`), made absolute: a queued
    experiment runs in a temporary copy of the repository (`.dvc/tmp/exps/...`), where they would not resolve."""
    return {key: str((root / value).resolve()) for key, value in _flatten(defaults).items()
            if isinstance(value, str) and value.startswith("../")}


def queue(grid_path: str | Path, jobs: int = 1, run: bool = False, dry_run: bool = False,
          params_path: str | Path = "params.yaml") -> list[list[str]]:
    """Queue every combination of the grid as a DVC experiment (checked against the params schema first) and,
    with `run`, start `dvc queue start -j <jobs>`. With `dry_run` nothing is submitted. Returns the commands."""
    grid = read(grid_path)
    defaults = read(params_path)
    outside = outside_paths(defaults, Path(params_path).resolve().parent)
    try:
        named = experiments(grid, Path(grid_path).stem)
    except ValueError as e:
        raise ValueError(f"{grid_path}: {e}") from e
    exps = [(n, a | {k: v for k, v in outside.items() if k not in a}) for n, a in named]
    for exp_name, assignment in exps:
        validate(assignment, defaults, exp_name)
    stages = set(read(Path(params_path).with_name("dvc.yaml"))["stages"])
    for target in grid.get("targets") or []:
        if target.split("@")[0] not in stages:
            raise ValueError(f"targets: {target!r} is not a stage of dvc.yaml; stages are {sorted(stages)}")
    cmds = [command(n, a, grid.get("targets") or []) for n, a in exps] + ([["dvc", "queue", "start", "-j", str(jobs)]] if run else [])
    for cmd in cmds:
        print(shlex.join(cmd), flush=True)
        if not dry_run:
            subprocess.run(cmd, check=True)
    return cmds


# --- run-cache through a remote ------------------------------------------------------------------------------

def push_run_cache(remote: str | None = None) -> tuple[int, int]:
    """`dvc push --run-cache` plus the outputs its entries point at; returns (entries, objects pushed). DVC 3's own
    push sends the entries but only the outputs of the pushed revisions, and never a git-tracked (`cache: false`)
    output such as each stage's metrics file: another machine then finds an entry whose objects no remote has and
    reruns the stage. Its `dvc exp run --pull` / `dvc repro --pull` fetches them."""
    from dvc.repo import Repo

    repo = Repo()
    entries = repo.stage_cache.push(remote)
    pushed = failed = 0
    for objs in repo.stage_cache.get_used_objs(entries).values():
        result = repo.cloud.push(objs, remote=remote)
        pushed, failed = pushed + len(result.transferred), failed + len(result.failed)
    if failed:
        raise SystemExit(f"{failed} objects of the run-cache are not in the local cache; push from the machine that ran them")
    return len(entries), pushed


# --- frontier -------------------------------------------------------------------------------------------------

def _run(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return out


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
        settings.append(_flatten(state["data"]["params"].get("params.yaml", {}).get("data", {})))
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
        _save(fig, path)
        written.append(path)
    return written


def frontier(out: str | Path, budget_ratio: float, revs: Iterable[str] = (), force: bool = False) -> pd.DataFrame:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("queue", help="queue a grid's experiments in DVC's queue")
    q.add_argument("grid", help="sweep file, e.g. sweeps/thesis.yaml")
    q.add_argument("-j", "--jobs", type=int, default=1, help="queue workers for --start (1 on a 2-core CPU)")
    q.add_argument("--start", action="store_true", help="then run `dvc queue start -j JOBS`")
    q.add_argument("--dry-run", action="store_true", help="print the commands only")
    r = sub.add_parser("push-run-cache", help="dvc push --run-cache, with the outputs the entries point at")
    r.add_argument("-r", "--remote", default=None, help="DVC remote (default: the default remote)")
    f = sub.add_parser("frontier", help="size-quality frontier of the finished experiments")
    f.add_argument("--out", default="metrics/frontier.csv", help="CSV to write; the summary goes beside it as .md")
    f.add_argument("--budget", type=float, default=0.5, help="disk size budget as a ratio to base")
    f.add_argument("--rev", action="append", default=[], metavar="COMMIT",
                   help="baseline commit whose experiments to read (repeatable; default HEAD)")
    f.add_argument("--force", action="store_true", help="replace an --out of more experiments than found now")
    args = parser.parse_args(argv)
    try:
        if args.command == "queue":
            queue(args.grid, args.jobs, args.start, args.dry_run)
        elif args.command == "push-run-cache":
            entries, objects = push_run_cache(args.remote)
            print(f"{entries} run-cache entries and {objects} objects they point at pushed")
        else:
            df = frontier(args.out, args.budget, args.rev, args.force)
            print(Path(args.out).with_suffix(".md").read_text(encoding="utf-8"), end="")
            print(f"{len(df)} experiments -> {args.out}", file=sys.stderr)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
    main()
