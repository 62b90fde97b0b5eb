"""Recipe sweeps: a grid of params (`sweeps/<name>.yaml`, llmshrink/grid.py) queued as DVC experiments in DVC's own
queue, the size-quality frontier over the finished experiments (llmshrink/frontier.py), and the run-cache pushed to
a remote (llmshrink/run_cache.py).

    python -m llmshrink.sweep queue sweeps/thesis.yaml [-j N] [--start] [--dry-run]
    python -m llmshrink.sweep frontier [--out metrics/frontier.csv] [--budget 0.5]
    python -m llmshrink.sweep push-run-cache [-r REMOTE]
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

from llmshrink import frontier, run_cache
from llmshrink.grid import experiments, flatten, render
from llmshrink.params import integer, read
from llmshrink.params.sections import SECTIONS


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
    return {key: str((root / value).resolve()) for key, value in flatten(defaults).items()
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
            entries, objects = run_cache.push(args.remote)
            print(f"{entries} run-cache entries and {objects} objects they point at pushed")
        else:
            df = frontier.write(args.out, args.budget, args.rev, args.force)
            print(Path(args.out).with_suffix(".md").read_text(encoding="utf-8"), end="")
            print(f"{len(df)} experiments -> {args.out}", file=sys.stderr)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
    main()
