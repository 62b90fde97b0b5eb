"""What a stage process costs before and after its work, cold against warm (llmshrink.warm), side by side in one
run: the wall time of `python -m stages.<name> --help` (start, imports, exit) for each stage, alternating cold and
warm for several rounds under one warm server.

    python benchmarks/warm_start.py --out benchmarks/results/warm_start.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmshrink.benchmark import provenance  # noqa: E402

STAGES = ["prepare_model", "score_layers", "lora", "quantize", "evaluate", "benchmark", "report"]


def seconds(stage: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", f"stages.{stage}", "--help"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "warm_start.json")
    args = parser.parse_args()
    if "LLMSHRINK_WARM" not in os.environ:  # rerun this script as the warm runner's command
        sys.exit(subprocess.call([sys.executable, "-m", "llmshrink.warm", sys.executable, *sys.argv], cwd=ROOT))
    warm = dict(os.environ)
    cold = {k: v for k, v in warm.items() if k != "LLMSHRINK_WARM"}
    first = seconds(STAGES[0], warm)  # waits for the server's preload
    times: dict[str, dict[str, list[float]]] = {s: {"cold": [], "warm": []} for s in STAGES}
    for _ in range(args.rounds):
        for stage in STAGES:
            times[stage]["cold"].append(seconds(stage, cold))
            times[stage]["warm"].append(seconds(stage, warm))
    result = {**provenance(),
              "rounds": args.rounds, "first_warm_call_seconds": round(first, 2), "stages": {}}
    for stage, t in times.items():
        c, w = statistics.median(t["cold"]), statistics.median(t["warm"])
        result["stages"][stage] = {"cold_seconds": round(c, 2), "warm_seconds": round(w, 3),
                                   "cold_over_warm": round(c / w, 1), "cold_runs": [round(x, 2) for x in t["cold"]],
                                   "warm_runs": [round(x, 3) for x in t["warm"]]}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
