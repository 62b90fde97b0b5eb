"""DVC's queue on several GPUs of one host: the same grid (sweeps/multigpu.yaml) run with `dvc queue start -j 1`
and with `-j <GPUs>` under `LLMSHRINK_GPU_LOCKS`, each in its own fresh repository and cache (no run-cache hit
between the two), on a random model of a real Llama shape with the GPU profile.

    python benchmarks/multigpu.py --jobs 2 --assets device     # then --jobs 1

The shared upstream (prepare_model, prepare_data, score_layers) is reproduced and committed before the clock
starts, so each experiment does the same work: depth_prune, width_prune, evaluate@width. The wall time runs
from `dvc queue start` to the last experiment's end. nvidia-smi is sampled meanwhile for every GPU's memory and
utilisation, and each stage's timing record says which GPU it ran on. Each call merges its run into `--out`;
once both are there it holds the speedup. A run must finish within one call of a lent machine: the queue's
workers end with the call.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gpu_pipeline import ROOT, set_params, workspace

from llmshrink import hardware
from llmshrink.benchmark import provenance

GRID = ROOT / "sweeps" / "multigpu.yaml"
# one evaluation in about 20 s at this shape instead of the profile's whole multiple-choice sets
SETS = ["data.choice_items=500", "data.qa_eval=500"]
BUSY = 10  # % utilisation from which a sample counts as busy


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    return subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def prepare(shape: str, assets: Path, ws: Path, grid: Path) -> None:
    """A fresh repository with the shared upstream reproduced and committed, and the grid queued."""
    workspace(shape, assets, ROOT / "profiles" / "gpu.txt", ws)
    set_params(ws / "params.yaml", SETS)
    subprocess.run(["dvc", "repro", "score_layers"], cwd=ws, check=True)
    run(["git", "add", "-A"], ws)
    run(["git", "commit", "-qm", "shared upstream"], ws)
    subprocess.run([sys.executable, "-m", "llmshrink.sweep", "queue", str(grid)], cwd=ws, check=True)


def queue_states(ws: Path) -> list[str]:
    """The status column of `dvc queue status` (Queued, Running, Success, Failed)."""
    rows = [line.split() for line in run(["dvc", "queue", "status"], ws).splitlines()[1:]]
    return [row[-1] for row in rows if row and row[-1] in ("Queued", "Running", "Success", "Failed")]


def gpu_samples(log: Path) -> dict[str, dict[str, float]]:
    """Per GPU index from an nvidia-smi CSV log: peak memory used (bytes) and the share of busy samples."""
    per: dict[str, list[tuple[float, float]]] = {}
    for line in log.read_text().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 3 and all(f.isdigit() for f in fields):
            per.setdefault(fields[0], []).append((float(fields[1]), float(fields[2])))
    return {gpu: {"peak_memory_used_bytes": int(max(m for _, m in s) * 2**20),
                  "busy_share": round(sum(u >= BUSY for u, _ in s) / len(s), 3), "samples": len(s)}
            for gpu, s in per.items()}


def measure(ws: Path, jobs: int, gpus: int) -> dict[str, Any]:
    """`dvc queue start -j jobs` until the queue is empty: wall seconds, experiment outcomes, per-GPU use."""
    timings, smi_log = ws / "timings.jsonl", ws / "nvidia-smi.csv"
    env = {**os.environ, "LLMSHRINK_TIMINGS": str(timings), hardware.GPU_LOCKS: str(ws / ".gpu-locks")}
    with open(smi_log, "w") as log:
        smi = subprocess.Popen(["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used",
                                "--format=csv,noheader,nounits", "-lms", "500"], stdout=log) if gpus else None
        start = time.perf_counter()
        # not through a pipe: the detached workers inherit it, and reading it to its end would wait for them
        with open(ws / "queue-start.log", "w") as out:
            subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=ws, env=env, check=True, stdout=out,
                           stderr=subprocess.STDOUT)
        states = queue_states(ws)
        while "Queued" in states or "Running" in states:
            time.sleep(2)
            states = queue_states(ws)
        wall = time.perf_counter() - start
        if smi:
            smi.terminate()
    records = [json.loads(line) for line in timings.read_text().splitlines() if line.strip()] if timings.exists() else []
    per_gpu = gpu_samples(smi_log)
    for r in records:
        if "peak_gpu_bytes" in r and r.get("gpu") in per_gpu:
            g = per_gpu[r["gpu"]]
            g["stage_runs"] = g.get("stage_runs", 0) + 1
            g["peak_gpu_bytes"] = max(g.get("peak_gpu_bytes", 0), r["peak_gpu_bytes"])
    return {"jobs": jobs, "wall_seconds": round(wall, 1), "experiments": len(states),
            "succeeded": states.count("Success"), "per_gpu": per_gpu,
            "stages": [r for r in records if "peak_gpu_bytes" in r]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, required=True, help="queue workers: 1, or the number of GPUs")
    parser.add_argument("--shape", default="llama-3.2-1b")
    parser.add_argument("--assets", type=Path, required=True, help="tokenizer/ and data/, as for gpu_pipeline.py")
    parser.add_argument("--grid", type=Path, default=GRID)
    parser.add_argument("--work", type=Path, default=Path("/tmp/llmshrink-multigpu"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "multigpu.json")
    args = parser.parse_args()
    ws = args.work / f"j{args.jobs}"
    prepare(args.shape, args.assets, ws, args.grid.resolve())
    gpus = hardware.gpu_count()
    result = measure(ws, args.jobs, gpus)
    out = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = {**out.get("runs", {}), str(args.jobs): {**provenance(), **result}}
    out = {**provenance(), "gpus": gpus, "experiments": result["experiments"], "shape": args.shape,
           "device": run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], ROOT).splitlines()[0] if gpus else "cpu",
           "grid": str(args.grid), "runs": runs}
    if runs.get("1", {}).get("wall_seconds") and runs.get(str(gpus), {}).get("wall_seconds"):
        out |= {"wall_seconds_parallel": runs[str(gpus)]["wall_seconds"],
                "wall_seconds_one_gpu": runs["1"]["wall_seconds"],
                "speedup": round(runs["1"]["wall_seconds"] / runs[str(gpus)]["wall_seconds"], 3)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "runs"} | {"run": {k: v for k, v in result.items() if k != "stages"}}, indent=2))


if __name__ == "__main__":
    main()
