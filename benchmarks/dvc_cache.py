"""What DVC costs on a large stage output, by cache link type, side by side in one process: `dvc commit` of a
fresh output of `--gib` GiB (hash it, then put it into the cache: a copy, or a hard link), and `dvc status`
afterwards (unchanged files are not hashed again: DVC's state database knows their inode and mtime).

    python benchmarks/dvc_cache.py --gib 2 --rounds 2 --out benchmarks/results/dvc_cache.json

A stand-in for a checkpoint of a few GB (random bytes in `model.safetensors`); the rounds interleave the link
types so that both see the same disk and page cache.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmshrink.benchmark import provenance  # noqa: E402

LINK_TYPES = ("copy", "hardlink")


def run(cwd: Path, *args: str) -> float:
    """Seconds `args` took in `cwd` (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def one(link: str, gib: float, work: Path) -> dict[str, float]:
    """A stage writing a fresh output of `gib` GiB, committed with the cache link type `link`; then a status."""
    repo = work / link
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir()
    run(repo, "git", "init", "-q")
    run(repo, "dvc", "init", "-q")
    run(repo, "dvc", "config", "cache.type", link)
    run(repo, "dvc", "stage", "add", "-q", "-n", "write", "-o", "model", "true")
    (repo / "model").mkdir()
    with open(repo / "model" / "model.safetensors", "wb") as f:
        for _ in range(int(gib * 1024)):
            f.write(os.urandom(2**20))
    commit = run(repo, "dvc", "commit", "-f", "write")
    status = run(repo, "dvc", "status")
    shutil.rmtree(repo)
    return {"commit_s": commit, "status_s": status}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.0, help="output size in GiB")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dvc_cache.json")
    args = parser.parse_args()
    times: dict[str, list[dict[str, float]]] = {link: [] for link in LINK_TYPES}
    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as work:
        for _ in range(args.rounds):
            for link in LINK_TYPES:
                times[link].append(one(link, args.gib, Path(work)))
    result = {**provenance(), "gib": args.gib, "rounds": args.rounds, "link_types": {
        link: {key: statistics.median(r[key] for r in runs) for key in runs[0]} | {"runs": runs}
        for link, runs in times.items()}}
    result["hardlink_commit_vs_copy"] = result["link_types"]["hardlink"]["commit_s"] / result["link_types"]["copy"]["commit_s"]
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: {m: v[m] for m in ("commit_s", "status_s")} for k, v in result["link_types"].items()}, indent=2))


if __name__ == "__main__":
    main()
