"""llama.cpp's speed in the benchmark: skipped with a clear message without `make edge`; with a binary, llama-bench's
JSON read into interleaved medians, ratios to base and each run's own peak memory (a stand-in binary here)."""
from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

from llmshrink import llamacpp

# prints llama-bench's JSON for -p P -n N: prefill at 100 tok/s for files named base*, else 300; decode a tenth
FAKE = f"""#!{sys.executable}
import json, sys, time
a = sys.argv
m, p, n = a[a.index("-m") + 1], int(a[a.index("-p") + 1]), int(a[a.index("-n") + 1])
blob = bytearray(64 << 20)  # 64 MiB resident for a while
time.sleep(0.3)
speed = 100.0 if "base" in m else 300.0
print(json.dumps([{{"n_prompt": p, "n_gen": 0, "avg_ts": speed}}, {{"n_prompt": 0, "n_gen": n, "avg_ts": speed / 10}}]))
"""


def test_skipped_without_make_edge(tmp_path: Path) -> None:
    result = llamacpp.compare({"base": tmp_path}, 1, 16, 4, 2, binary=tmp_path / "missing")
    assert result == {"skipped": llamacpp.SKIPPED} and "make edge" in result["skipped"]


def test_bench_reads_llama_bench_json(tmp_path: Path) -> None:
    binary = tmp_path / "llama-bench"
    binary.write_text(FAKE)
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    files = {name: tmp_path / f"{name}.gguf" for name in ("base", "export")}
    for f in files.values():
        f.write_bytes(b"GGUF")
    result = llamacpp.bench(files, 2, 16, 4, 2, binary=binary)
    assert json.loads(json.dumps(result)) == result and result["settings"]["rounds"] == 2
    base, export = result["checkpoints"]["base"], result["checkpoints"]["export"]
    assert (base["prefill_tok_s"], base["decode_tok_s"], export["prefill_tok_s"]) == (100.0, 10.0, 300.0)
    assert export["prefill_vs_base"] == export["decode_vs_base"] == 3.0 and export["bytes"] == 4
    assert 64 << 20 < export["peak_mem_bytes"] < 256 << 20  # its own memory, not this (torch-sized) process's
