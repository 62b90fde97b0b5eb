"""llama.cpp's own C++ tools, built once from the llama.cpp vendored in the llama-cpp-python source distribution
(the converter's source, `export.LLAMA_CPP`) into the download cache, shared by every clone: `llama-quantize`
(the K-quants and importance-matrix quantization of the export and the baselines) and `llama-bench` (the
benchmark stage times each GGUF file with it in interleaved rounds).

`make edge` (`python -m llmshrink.llamacpp`) builds them (cmake and a C++ compiler; 15-25 minutes on 2 cores,
once per machine); `make repro` does it first."""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llmshrink import export, gguf_files, pypi

TOOLS = ("llama-quantize", "llama-bench")
SKIPPED = "llama-bench not built: run `make edge` (builds llama.cpp from the llama-cpp-python sdist)"


def build_dir() -> Path:
    return pypi.cache_dir() / export.LLAMA_CPP.replace("==", "-") / "build"


def tool(name: str) -> Path:
    """The path of the built tool `name` (it may not exist yet)."""
    return build_dir() / "bin" / name


def require(name: str) -> Path:
    """The built tool `name`, or an error that says how to build it."""
    if not (path := tool(name)).is_file():
        raise FileNotFoundError(f"{name} is not built ({path}): run `make edge` once (builds llama.cpp's tools "
                                f"from the {export.LLAMA_CPP} source distribution, 15-25 minutes on 2 cores)")
    return path


def build(out: Path | None = None) -> Path:
    """Configure and build `TOOLS` (Release, CPU backend) from the cached llama.cpp source; returns the folder."""
    out = out or build_dir()
    src = pypi.sdist_dir(export.LLAMA_CPP, "vendor/llama.cpp", (), name="llama.cpp-src")
    # x86-64 with AVX-512 (this project's machines) without AMX: the -march=native build's AMX kernels die with
    # SIGILL on Q4_0 in this VM although the CPU lists amx_int8
    cpu = ["-DGGML_NATIVE=OFF", *(f"-DGGML_{f}=ON" for f in ("AVX", "AVX2", "FMA", "F16C", "AVX512", "AVX512_VNNI",
                                                             "AVX512_BF16"))]
    options = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
               "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DGGML_OPENMP=OFF", *cpu]
    subprocess.run(["cmake", "-S", str(src), "-B", str(out), *options], check=True)
    subprocess.run(["cmake", "--build", str(out), "--target", *TOOLS, "-j", str(os.cpu_count())], check=True)
    return out / "bin"


def quantize(src: Path, dst: Path, file_type: str, imatrix: Path | None = None, pure: bool = False,
             types: dict[str, str] | None = None) -> None:
    """`llama-quantize` of the F16/BF16/F32 GGUF file `src` into `dst` as `file_type` (e.g. q4_k_m), with the
    importance matrix file `imatrix`; `pure` turns off the K-quant mixtures; `types` sets tensor types by name
    (`token_embd`, `output`: those flags; other keys: `--tensor-type` patterns)."""
    cmd = [str(require("llama-quantize"))]
    if imatrix:
        cmd += ["--imatrix", str(imatrix)]
    if pure:
        cmd.append("--pure")
    for pattern, kind in (types or {}).items():
        flag = {"token_embd": ["--token-embedding-type"], "output": ["--output-tensor-type"]}.get(pattern)
        cmd += [*flag, kind] if flag else ["--tensor-type", f"{pattern}={kind}"]
    cmd += [str(src), str(dst), file_type.upper(), str(os.cpu_count())]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"llama-quantize failed on {src} (exit {done.returncode}): {done.stderr[-3000:]}")


def _peak_rss(pid: int) -> int:
    """The peak resident bytes so far of a running process (VmHWM, counted from its exec; 0 once it has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:")), 0)


def _run(binary: Path, file: Path, prompt_tokens: int, new_tokens: int, threads: int) -> tuple[dict, int]:
    """One llama-bench repetition of prefill (pp) and decode (tg) on `file`: its JSON records and the process's
    peak resident bytes, polled every 20 ms (the rusage of a child forked from this process would count this
    process's own memory too)."""
    cmd = [str(binary), "-m", str(file), "-p", str(prompt_tokens), "-n", str(new_tokens), "-t", str(threads),
           "-r", "1", "-o", "json"]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _peak_rss(proc.pid))
            time.sleep(0.02)
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {err.read()[-2000:]}")
        out.seek(0)
        records = {("prefill" if r["n_prompt"] else "decode"): r for r in json.load(out)}
    return records, peak


def bench(files: dict[str, Path], rounds: int, prompt_tokens: int, new_tokens: int, threads: int,
          binary: Path | None = None) -> dict[str, Any]:
    """Prefill and decode tokens/s (median over `rounds` interleaved rounds, llama-bench at batch 1) and peak
    resident memory of each GGUF file of `files` (name -> file), with ratios to the first; or why it was skipped."""
    binary = binary or tool("llama-bench")
    if not binary.is_file():
        return {"skipped": SKIPPED}
    speed: dict[str, list[tuple[float, float]]] = {n: [] for n in files}
    peak = dict.fromkeys(files, 0)
    for _ in tqdm(range(rounds), desc="llama.cpp rounds"):
        for name, file in files.items():
            records, rss = _run(binary, file, prompt_tokens, new_tokens, threads)
            speed[name].append((records["prefill"]["avg_ts"], records["decode"]["avg_ts"]))
            peak[name] = max(peak[name], rss)
    base = next(iter(files))
    median = {n: [statistics.median(v[i] for v in speed[n]) for i in (0, 1)] for n in files}
    out = {n: {"bytes": files[n].stat().st_size, "prefill_tok_s": median[n][0],
               "decode_tok_s": median[n][1], "prefill_vs_base": median[n][0] / median[base][0],
               "decode_vs_base": median[n][1] / median[base][1], "peak_mem_bytes": peak[n]} for n in files}
    return {"settings": {"threads": threads, "rounds": rounds, "prompt_tokens": prompt_tokens,
                         "new_tokens": new_tokens, "llama_cpp": export.LLAMA_CPP}, "checkpoints": out}


def compare(paths: dict[str, Path], rounds: int, prompt_tokens: int, new_tokens: int, threads: int,
            binary: Path | None = None) -> dict[str, Any]:
    """`bench` of the baseline (the first of `paths`, converted to an F16 GGUF file in a temporary folder) and of
    every GGUF checkpoint of `paths` (name -> folder); or why it was skipped."""
    ggufs = {n: Path(p) / f for n, p in paths.items() if (f := gguf_files.gguf_file(p))}
    binary = binary or tool("llama-bench")
    if not binary.is_file() or not ggufs:
        return {"skipped": SKIPPED if not binary.is_file() else "no GGUF checkpoint among the benchmarked ones"}
    base, path = next(iter(paths.items()))
    with tempfile.TemporaryDirectory() as tmp:
        export.to_gguf(path, Path(tmp) / base, "f16")
        return bench({f"{base}_f16": Path(tmp) / base / export.GGUF_NAME, **ggufs}, rounds, prompt_tokens,
                     new_tokens, threads, binary)


if __name__ == "__main__":
    if not shutil.which("cmake"):
        sys.exit("make edge needs cmake (apt-get install cmake, or pip install cmake) and a C++ compiler")
    if all(tool(t).is_file() for t in TOOLS):
        print(f"{', '.join(TOOLS)} already built in {build_dir()}")
    else:
        print(f"built {', '.join(TOOLS)} in {build()}")
