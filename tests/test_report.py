"""Summary table from synthetic evaluation results."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from llmshrink import report

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["base", "depth", "width", "lora", "gptq", "eora"]  # the checkpoint list of dvc.yaml's vars
DECODE = {"gptq": 40.0, "base": 20.0, "width": 20.0}  # tokens/s of the benchmark stage


def result(ppl: float, em: float, params: int, disk: int) -> dict:
    return {"wikitext": {"ppl": ppl, "tokens": 1000},
            "triviaqa": {"exact_match": em, "match": em + 0.1, "n": 100, "open_exact_match": None,
                         "samples": [{"question": "q"}]},
            "size": {"params": params, "params_nonzero": params // 2, "disk_bytes": disk, "weight_bytes_fp16": 2 * params},
            "dtype": "float32"}


@pytest.fixture
def eval_dir(tmp_path: Path) -> Path:
    d = tmp_path / "metrics" / "eval"
    d.mkdir(parents=True)
    for name, r in {"gptq": result(30.0, 0.05, 100, 25_000_000),
                    "base": result(20.0, 0.10, 200, 100_000_000),
                    "width": result(25.0, 0.0, 200, 100_000_000)}.items():
        (d / f"{name}.json").write_text(json.dumps(r))
    checkpoints = {name: {"prefill_tok_s": 100.0, "decode_tok_s": decode, "peak_mem_bytes": 1000,
                          "decode_vs_base": 0.0, "spread": {"decode_tok_s": {"median": decode}}, "dtype": "float32"}
                   for name, decode in DECODE.items()}
    (tmp_path / "metrics" / "benchmark.json").write_text(json.dumps({"machine": {}, "checkpoints": checkpoints}))
    return d


def benchmark(eval_dir: Path) -> Path:
    return eval_dir.parent / "benchmark.json"


def test_rows_in_pipeline_order_with_ratios_to_base(eval_dir):
    df = report.summary(report.read_metrics(eval_dir, ORDER, benchmark(eval_dir)))
    assert df["checkpoint"].tolist() == ["base", "width", "gptq"]
    assert df["ppl"].tolist() == [20.0, 25.0, 30.0]
    assert df["exact_match"].tolist() == [0.10, 0.0, 0.05]
    assert df["disk_mb"].tolist() == [100.0, 100.0, 25.0]
    assert df["ppl_vs_base"].tolist() == pytest.approx([1.0, 1.25, 1.5])
    assert df["disk_vs_base"].tolist() == pytest.approx([1.0, 1.0, 0.25])
    assert df["exact_match_vs_base"].tolist() == pytest.approx([1.0, 0.0, 0.5])
    assert df["decode_vs_base"].tolist() == pytest.approx([1.0, 1.0, 2.0])
    assert df["params_nonzero"].tolist() == [100, 100, 50] and df["dtype"].tolist() == ["float32"] * 3
    assert "samples" not in df and df["open_exact_match"].isna().all()
    assert df["peak_mem_bytes"].tolist() == [1000] * 3 and "spread" not in df  # only the benchmark's speeds


def test_order_comes_from_the_caller_and_speed_is_optional(eval_dir):
    (eval_dir / "extra.json").write_text(json.dumps(result(40.0, 0.0, 100, 1)))
    metrics = report.read_metrics(eval_dir, ["gptq", "base"])
    assert list(metrics) == ["gptq", "base", "extra", "width"]  # listed first in the given order, the rest sorted
    assert all("speed" not in m for m in metrics.values())
    df = report.summary(metrics)
    assert "decode_vs_base" not in df and df["ppl_vs_base"].tolist() == pytest.approx([1.5, 1.0, 2.0, 1.25])


def test_ratios_are_nan_without_base_or_zero_base(eval_dir):
    (eval_dir / "base.json").unlink()
    df = report.summary(report.read_metrics(eval_dir, ORDER, benchmark(eval_dir)))
    assert df["checkpoint"].tolist() == ["width", "gptq"] and df["ppl_vs_base"].isna().all()
    (eval_dir / "base.json").write_text(json.dumps(result(20.0, 0.0, 200, 100)))
    df = report.summary(report.read_metrics(eval_dir, ORDER, benchmark(eval_dir)))
    assert df["exact_match_vs_base"].isna().all() and not df["ppl_vs_base"].isna().any()


def test_flatten_prefixes_names_found_in_two_sections():
    flat = report.flatten({"a": {"n": 1, "x": 2.0}, "b": {"n": 3, "y": [1, 2]}, "dtype": "bfloat16"})
    assert flat == {"a_n": 1, "x": 2.0, "b_n": 3, "dtype": "bfloat16"}


def test_report_stage_writes_csv_and_markdown(eval_dir):
    cwd = eval_dir.parents[1]
    subprocess.run([sys.executable, str(ROOT / "stages" / "report.py"), "metrics/eval", "metrics/benchmark.json",
                    "metrics/summary.csv", "metrics/summary.md", "--checkpoints", *ORDER], cwd=cwd, check=True)
    df = pd.read_csv(cwd / "metrics" / "summary.csv")
    assert df["checkpoint"].tolist() == ["base", "width", "gptq"]
    assert {"ppl", "exact_match", "disk_mb", "ppl_vs_base", "disk_vs_base"} <= set(df.columns)
    assert df["disk_vs_base"].tolist() == pytest.approx([1.0, 1.0, 0.25])
    assert df["decode_vs_base"].tolist() == pytest.approx([1.0, 1.0, 2.0])
    md = (cwd / "metrics" / "summary.md").read_text().splitlines()
    assert md[0].startswith("| checkpoint") and len(md) == 2 + 3 and "| gptq " in md[-1]
    assert not math.isnan(df["ppl_vs_base"].iloc[-1])
