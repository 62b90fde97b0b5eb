"""The whole DAG through `dvc repro` on one GPU with a random model of a real Llama shape, the GPU profile
(profiles/gpu.txt) and local data; per-stage wall time and peak GPU memory (LLMSHRINK_TIMINGS), evaluation
throughput against the bf16 roofline, compiled batch-1 decode, and the GPTQ kernel that ran.

    python benchmarks/gpu_pipeline.py --shape llama-3.2-1b --assets device --out benchmarks/results/gpu_pipeline.json

`--assets` is a folder with `tokenizer/` (a saved tokenizer) and `data/` (the layout of ../shared/data); the
result is merged into `--out` (one run per shape). Runs on a CPU too (slowly), with `--shape tiny` for a dry run.
A run longer than one session on the machine continues with `--resume --timeout S` (DVC reruns only what is not
done; the wall time adds up over the calls); it is `ok` once `dvc status` is clean. Without internet the export
stage needs the llama.cpp converter in `$LLMSHRINK_CACHE` (README, GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmshrink import benchmark, hardware, models, sources  # noqa: E402
from llmshrink.perplexity import window_nll  # noqa: E402

H200_BF16_DENSE_PEAK = 989.4e12  # FLOP/s, the datasheet's dense bf16 rate (H100/H200 SXM)


def workspace(shape: str, assets: Path, profile: Path, path: Path) -> Path:
    """A fresh git + DVC repository with the project's pipeline and params set for this run."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", "stages", "llmshrink", ".dvc", ".dvcignore"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, path / name)
    shutil.rmtree(path / ".dvc" / "cache", ignore_errors=True)
    shutil.rmtree(path / ".dvc" / "tmp", ignore_errors=True)
    data = assets.resolve() / "data"
    sets = [line.strip() for line in profile.read_text().splitlines() if line.strip()]
    sets += [f"model.tokenizer={assets.resolve() / 'tokenizer'}", "data.source=local",
             f"data.local.wikitext_test={data}/wikitext2/test_rows.json",
             f"data.local.wikitext_valid={data}/wikitext2/valid_tokens.txt",
             f"data.local.triviaqa={data}/triviaqa/validation.jsonl",
             f"data.local.shakespeare={data}/text/tinyshakespeare.txt",
             f"data.choice_files.arc_easy={data}/zeroshot/arc_easy.jsonl",
             f"data.choice_files.piqa={data}/zeroshot/piqa.jsonl"]
    sets += ["model.source=tiny", "model.dtype=float32", "gptq.group_size=32"] if shape == "tiny" else \
            ["model.source=random", f"model.shape={shape}", "model.dtype=bfloat16"]
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "bench",
           "GIT_COMMITTER_EMAIL": "b@b"}
    if shutil.which("git"):
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
            subprocess.run(cmd, cwd=path, check=True, env=env)
    else:  # an image without git: DVC without an SCM
        subprocess.run(["dvc", "config", "core.no_scm", "true"], cwd=path, check=True)
    subprocess.run(["dvc", "config", "--local", "cache.type", "hardlink,symlink"], cwd=path, check=True)
    set_params(path / "params.yaml", sets)
    return path


def set_params(path: Path, sets: list[str]) -> None:
    """Apply `section.key=value` settings to a params file, values read as YAML 1.2 like `dvc exp run -S`."""
    yaml = YAML()
    params = yaml.load(path)
    for s in sets:
        key, value = s.split("=", 1)
        *parents, last = key.split(".")
        node = params
        for k in parents:
            node = node[k]
        node[last] = YAML(typ="safe", pure=True).load(value)
    yaml.dump(params, path)


def timed(dev: torch.device, run: Any) -> float:
    """Wall seconds of `run()`, with the work queued on `dev` finished before and after."""
    benchmark.sync(dev)
    start = time.perf_counter()
    run()
    benchmark.sync(dev)
    return time.perf_counter() - start


@torch.no_grad()
def eval_throughput(model: torch.nn.Module, seq_len: int = 2048, batch: int = 16, batches: int = 8) -> dict[str, float]:
    """Perplexity-scoring tokens/s of a model, run as the evaluator runs it (`window_nll`: on a GPU the decoder
    layers and the head + loss compiled), and its share of the bf16 roofline: 2 x parameters x tokens/s against the
    datasheet peak and against a measured matmul; `warmup_seconds`: the first batch, compilation included."""
    dev = model.device
    params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    chunks = list(torch.randint(0, model.config.vocab_size, (batch * batches, seq_len), generator=g))

    mm = matmul_peak(dev)
    peak = H200_BF16_DENSE_PEAK if dev.type == "cuda" else mm
    warmup = timed(dev, lambda: window_nll(model, chunks[:batch], batch, progress=False))
    tok_s = len(chunks) * seq_len / timed(dev, lambda: window_nll(model, chunks, batch, progress=False))
    return {"eval_tok_s": tok_s, "params": params, "model_flop_s": 2 * params * tok_s, "matmul_peak_flop_s": mm,
            "roofline_share": 2 * params * tok_s / peak, "matmul_share": 2 * params * tok_s / mm,
            "warmup_seconds": round(warmup, 1)}


def matmul_peak(dev: torch.device, n: int = 8192, reps: int = 20) -> float:
    """Measured bf16 (GPU) or fastest-dtype (CPU) matrix-multiply rate in FLOP/s."""
    if dev.type != "cuda":
        return hardware.matmul_gflops(hardware.DTYPES[hardware.fastest_cpu_dtype()]) * 1e9
    a, b = (torch.randn(n, n, device=dev, dtype=torch.bfloat16) for _ in range(2))
    torch.mm(a, b)

    def products() -> None:
        for _ in range(reps):
            torch.mm(a, b)

    return 2 * n**3 * reps / timed(dev, products)


def read_records(timings: Path) -> list[dict[str, Any]]:
    """The JSON lines of a `LLMSHRINK_TIMINGS` file (none if it does not exist)."""
    return [json.loads(line) for line in (timings.read_text().split("\n") if timings.exists() else []) if line.strip()]


def stage_table(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-stage seconds and peak GPU memory from `LLMSHRINK_TIMINGS` records (a stage run twice: its last run),
    their sum, the parts of stages (evaluation: perplexity / QA / multiple choice, summed over checkpoints;
    quantize: load / GPTQ / save / zero-mask check) and, over the `dvc repro` calls this script recorded, where
    their wall time went: stage timers, stage start-up (from the fork of the warm runner: the stage's own imports)
    and the rest (DVC's start-up, hashing and linking outputs, and any stage a timeout killed)."""
    stages: dict[str, dict[str, float]] = {}
    parts: dict[str, float] = {}
    for r in records:
        if "peak_gpu_bytes" in r:
            stages[r["stage"]] = {"seconds": r["seconds"], "peak_gpu_bytes": r["peak_gpu_bytes"]}
        elif "stage" in r:
            parts[r["stage"]] = round(parts.get(r["stage"], 0.0) + r["seconds"], 2)
    table = {"total_seconds": round(sum(s["seconds"] for s in stages.values()), 1), "stages": stages,
             "stage_parts_seconds": parts}
    calls = [r for r in records if "call_seconds" in r]
    if calls:
        wall = sum(c["call_seconds"] for c in calls)
        runs = [r for r in records if "peak_gpu_bytes" in r and "started_at" in r]
        timers, startup = sum(r["seconds"] for r in runs), sum(r["startup_seconds"] or 0 for r in runs)
        table["repro_wall_seconds"] = round(wall, 1)
        table["wall_split_seconds"] = {"stage_timers": round(timers, 1), "stage_startup": round(startup, 1),
                                       "dvc_and_rest": round(wall - timers - startup, 1)}
    return table


def write_run(out: Path, run: dict[str, Any]) -> None:
    """Merge `run` into `out`, replacing the run of the same shape, and print it. An unfinished run (`ok` false)
    does not replace a finished one: it goes to `unfinished`, replacing an unfinished run of its shape there; a
    finished run removes the unfinished one of its shape."""
    previous = json.loads(out.read_text()) if out.exists() else {"runs": []}
    runs, unfinished = previous["runs"], previous.get("unfinished", [])
    if run.get("ok") or not any(r["shape"] == run["shape"] and r.get("ok") for r in runs):
        runs = [r for r in runs if r["shape"] != run["shape"]] + [run]
        unfinished = [r for r in unfinished if r["shape"] != run["shape"]]
    else:
        unfinished = [r for r in unfinished if r["shape"] != run["shape"]] + [run]
    out.parent.mkdir(parents=True, exist_ok=True)
    latest = {k: run[k] for k in benchmark.PROVENANCE if k in run}  # the file's provenance: its latest call's
    out.write_text(json.dumps({**latest, "runs": runs, **({"unfinished": unfinished} if unfinished else {})},
                              indent=2) + "\n")
    print(json.dumps(run, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama-3.2-1b", choices=["tiny", *sources.SHAPES])
    parser.add_argument("--assets", type=Path, required=True)
    parser.add_argument("--profile", type=Path, default=ROOT / "profiles" / "gpu.txt", help="section.key=value lines")
    parser.add_argument("--work", type=Path, default=Path("/tmp/llmshrink-gpu"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_pipeline.json")
    parser.add_argument("--resume", action="store_true", help="continue `dvc repro` in an existing workspace")
    parser.add_argument("--targets", nargs="*", default=[], help="stages for `dvc repro` (default: the whole DAG)")
    parser.add_argument("--throughput", action="store_true",
                        help="measure scoring throughput even if the DAG is not finished (default: only when it is)")
    parser.add_argument("--timeout", type=float, default=None, help="stop `dvc repro` after this many seconds")
    parser.add_argument("--summarize", type=Path, metavar="TIMINGS",
                        help="only record the stage table of an unfinished run from its timings file (fetched from "
                             "the GPU machine), as a run with ok=false")
    args = parser.parse_args()
    if args.summarize:
        records = read_records(args.summarize)
        table, devices = stage_table(records), {r.get("device") for r in records}
        write_run(args.out, {"shape": args.shape, "device": ", ".join(sorted(d for d in devices if d)), "ok": False,
                             "finished_stages": len(table["stages"]), **table})
        return
    ws = args.work / args.shape
    if not (args.resume and ws.is_dir()):
        workspace(args.shape, args.assets, args.profile, ws)
    else:  # the current code; DVC reruns what it changed
        for name in ("stages", "llmshrink"):
            shutil.copytree(ROOT / name, ws / name, dirs_exist_ok=True)
    timings = ws / "timings.jsonl"
    env = {**os.environ, "LLMSHRINK_TIMINGS": str(timings),
           "PYTHONPATH": os.pathsep.join([str(ws), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    # stages in forks of the warm runner; --keep-going: a failed stage stops only the stages that depend on it
    repro = subprocess.Popen([sys.executable, "-m", "llmshrink.warm", "dvc", "repro", "--keep-going", *args.targets],
                             cwd=ws, env=env, start_new_session=True)
    try:
        ok = repro.wait(timeout=args.timeout) == 0
    except subprocess.TimeoutExpired:  # the stage process too, so that it frees the GPU
        os.killpg(repro.pid, signal.SIGTERM)  # the warm runner then removes its socket folder
        try:
            repro.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(repro.pid, signal.SIGKILL)
            repro.wait()
        ok = False
    total = time.perf_counter() - start
    with timings.open("a") as f:  # this call's wall time, for the split of the run's wall time
        f.write(json.dumps({"call_seconds": round(total, 2), "ok": ok}) + "\n")
    pending = sorted(json.loads(subprocess.run(["dvc", "status", "--json"], cwd=ws, env=env, capture_output=True,
                                               text=True).stdout or "{}"))  # stages not (yet) reproduced
    dev = hardware.device()
    run = {**benchmark.provenance(), "shape": args.shape, "device": hardware.name(dev), "ok": ok and not pending,
           **({"pending": pending} if pending else {}), **stage_table(read_records(timings)),
           "last_call_seconds": round(total, 1)}
    if run["ok"] or args.throughput:  # not after every call of a run that spans several: it loads the model
        run |= eval_throughput(models.load(ws / "models" / "base", hardware.resolve_dtype("auto", dev), dev))
    if (ws / "metrics" / "benchmark.json").exists():
        bench = json.loads((ws / "metrics" / "benchmark.json").read_text())["checkpoints"]
        run["decode_tok_s_b1"] = bench["base"].get("decode_tok_s_compiled")
        run["decode_tok_s_b1_eager"] = bench["base"]["decode_tok_s"]
        run["decode_tok_s"] = {name: {k: v for k, v in b.items() if k.startswith("decode_tok_s")} for name, b in bench.items()}
        for name in ("gptq", "eora"):  # batch-1 decode, compiled, against the base's
            run[f"{name}_decode_vs_base"] = bench.get(name, {}).get("decode_vs_base_compiled")
    if (ws / "metrics" / "eval" / "eora.json").exists():
        run["gptq_kernel"] = json.loads((ws / "metrics" / "eval" / "gptq.json").read_text()).get("gptq_kernel")
        run["eval"] = {name: json.loads((ws / "metrics" / "eval" / f"{name}.json").read_text())["size"]
                       for name in ("base", "gptq", "eora")}
    write_run(args.out, run)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
