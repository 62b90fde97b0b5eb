"""Report from synthetic evaluation results: rows with intervals and ratios, paired differences, the stage's files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from llmshrink import report
from llmshrink.params import read

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["base", "depth", "width", "lora", "gptq", "eora"]  # the checkpoint list of dvc.yaml's vars
DECODE = {"gptq": 40.0, "base": 20.0, "width": 20.0}  # tokens/s of the benchmark stage
N = 200  # items per metric


def checkpoint(ppl: float, correct: int, disk: int, nll_shift: float = 0.0) -> tuple[dict, dict]:
    """Metrics and per-item results of one checkpoint: 10 perplexity windows of 100 tokens, N questions of which
    the first `correct` are right, N choice items likewise."""
    import math

    nll = [100 * math.log(ppl) + nll_shift * (i % 2) for i in range(10)]
    right = [1] * correct + [0] * (N - correct)
    items = {"perplexity": {"news": {"nll": nll, "tokens": [100] * 10}},
             "qa": {"exact_match": right, "match": right},
             "choice": {"arc": {"acc": right, "acc_norm": right}}}
    share = correct / N
    metrics = {"perplexity": {"news": {"ppl": ppl, "ci95": [ppl * 0.9, ppl * 1.1], "tokens": 1000, "domain": "out",
                                       "dataset": "news", "protocol": "standard"}},
               "qa": {"exact_match": share, "match": share, "ci95": [share - 0.05, share + 0.05],
                      "match_ci95": [share - 0.05, share + 0.05], "n": N},
               "choice": {"arc": {"acc": share, "acc_norm": share, "ci95": [share - 0.05, share + 0.05],
                                  "acc_norm_ci95": [share - 0.05, share + 0.05], "n": N}},
               "size": {"params": disk // 2, "params_nonzero": disk // 4, "disk_bytes": disk, "weight_bytes_fp16": disk}}
    return metrics, items


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    d = tmp_path / "metrics"
    for sub in ("eval", "items"):
        (d / sub).mkdir(parents=True)
    for name, (m, i) in {"gptq": checkpoint(30.0, 90, 25_000_000), "base": checkpoint(20.0, 100, 100_000_000),
                         "width": checkpoint(20.0, 100, 100_000_000)}.items():
        (d / "eval" / f"{name}.json").write_text(json.dumps(m))
        (d / "items" / f"{name}.json").write_text(json.dumps(i))
    checkpoints = {name: {"prefill_tok_s": 100.0, "decode_tok_s": decode, "decode_vs_base": decode / 20.0,
                          "peak_mem_bytes": 1000, "spread": {"decode_tok_s": {"median": decode}}}
                   for name, decode in DECODE.items()}
    (d / "benchmark.json").write_text(json.dumps({"machine": {}, "checkpoints": checkpoints}))
    return d


def test_rows_in_pipeline_order_with_intervals_and_ratios(metrics_dir: Path) -> None:
    metrics, items = report.read(metrics_dir / "eval", metrics_dir / "items", ORDER)
    assert list(metrics) == list(items) == ["base", "width", "gptq"]
    speed = json.loads((metrics_dir / "benchmark.json").read_text())["checkpoints"]
    df = report.summary(metrics, speed)
    assert df["ppl_news"].tolist() == [20.0, 20.0, 30.0]
    assert df["ppl_news_lo"].tolist() == pytest.approx([18.0, 18.0, 27.0])
    assert df["ppl_news_vs_base"].tolist() == pytest.approx([1.0, 1.0, 1.5])
    assert df["disk_bytes_vs_base"].tolist() == pytest.approx([1.0, 1.0, 0.25])
    assert df["arc_acc"].tolist() == pytest.approx([0.5, 0.5, 0.45])
    assert df["decode_vs_base"].tolist() == pytest.approx([1.0, 1.0, 2.0]) and "spread" not in df


def test_paired_differences_and_significance(metrics_dir: Path) -> None:
    _, items = report.read(metrics_dir / "eval", metrics_dir / "items", ORDER)
    comp = report.comparisons(items).set_index(["checkpoint", "against", "metric"])
    # width equals base item for item: difference 0, not significant
    same = comp.loc[("width", "base", "arc_acc")]
    assert same["diff"] == 0 and not same["significant"]
    # gptq: 10 of 200 items newly wrong (paired), perplexity 1.5x on every window: both significant
    acc = comp.loc[("gptq", "base", "arc_acc")]
    assert acc["diff"] == pytest.approx(-0.05) and acc["hi"] < 0 and acc["significant"]
    ppl = comp.loc[("gptq", "width", "ppl_news")]
    assert ppl["diff"] == pytest.approx(10.0) and ppl["lo"] > 0 and ppl["significant"]
    assert set(comp.index.get_level_values("against")) == {"base", "width"}  # base, and the previous checkpoint


@pytest.mark.parametrize("source", ["embedded", "gemma3-270m"])
def test_report_stage_writes_tables_and_plots(metrics_dir: Path, source: str) -> None:
    """The tables and plots; for Gemma 3 270M the summary first says that its weights lie on a Q4_K grid."""
    cwd = metrics_dir.parent
    model = {**read(ROOT / "params.yaml")["model"], "source": source}
    kv = {**read(ROOT / "params.yaml")["kv"], "deploy": "int4", "context": 4096}
    (cwd / "params.yaml").write_text(json.dumps({"seed": 0, "model": model, "kv": kv}))
    for name, layers in (("base", 30), ("width", 28), ("gptq", 28)):  # SmolLM2's shape, depth-pruned after base
        (cwd / "models" / name).mkdir(parents=True)
        (cwd / "models" / name / "config.json").write_text(json.dumps(
            {"num_hidden_layers": layers, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576,
             "max_position_embeddings": 8192}))
    subprocess.run([sys.executable, str(ROOT / "stages" / "report.py"), "metrics/eval", "metrics/items",
                    "metrics/benchmark.json", "models", "metrics", "--checkpoints", *ORDER], cwd=cwd, check=True)
    df = pd.read_csv(metrics_dir / "summary.csv")
    assert df["checkpoint"].tolist() == ["base", "width", "gptq"]
    # deployment: the weights plus the int4 cache (keys per channel, values per token, groups of 32, 128 bf16
    # tokens) at 4,096 tokens: per layer 2 x 3 heads x 64 channels x (3,968 x (0.5 + 4 / 32) + 128 x 2) bytes
    cache = [layers * 2 * 3 * 64 * (3968 * 0.625 + 128 * 2) / 1e6 for layers in (30, 28, 28)]
    assert df["kv_cache_mb"].tolist() == pytest.approx(cache, rel=1e-5)  # the CSV keeps 6 digits
    assert df["deploy_mb"].tolist() == pytest.approx([d + c for d, c in zip([100.0, 100.0, 25.0], cache)], rel=1e-5)
    comp = pd.read_csv(metrics_dir / "comparisons.csv")
    assert {"checkpoint", "against", "metric", "diff", "lo", "hi", "significant"} <= set(comp.columns)
    md = (metrics_dir / "summary.md").read_text()
    assert "| gptq |" in md and "n.s." in md and "news (out-domain" in md
    assert ("Q4_K grid" in md) == (source == "gemma3-270m") and md.startswith("Base: " if "Q4_K" in md else "|")
    assert "deploy MB" in md and "kv.deploy=int4 cache at kv.context: 4,096 tokens" in md
    pngs = sorted(p.name for p in (metrics_dir / "plots" / "report").glob("*.png"))
    assert pngs == ["size_vs_arc_acc.png", "size_vs_arc_acc_norm.png", "size_vs_ppl_news.png",
                    "size_vs_qa_exact_match.png", "size_vs_qa_match.png"]
    first = {p: (metrics_dir / "plots" / "report" / p).read_bytes() for p in pngs}
    subprocess.run([sys.executable, str(ROOT / "stages" / "report.py"), "metrics/eval", "metrics/items",
                    "metrics/benchmark.json", "models", "metrics", "--checkpoints", *ORDER], cwd=cwd, check=True)
    assert all((metrics_dir / "plots" / "report" / p).read_bytes() == b for p, b in first.items())  # reproducible


def test_checkpoints_against_the_baselines_with_paired_kl() -> None:
    """Every checkpoint but base and the baselines is compared with each baseline; the recipe's 'previous'
    comparison stops at the first baseline; KL's paired difference is per token; the verdict needs no more
    bytes and a significantly lower KL."""
    def item(kl: float, nll: float) -> dict:
        return {"perplexity": {"news": {"nll": [nll * 10 + i for i in range(4)], "tokens": [10] * 4}},
                "kl": {"news": {"kl": [kl * 10 + 0.01 * i for i in range(4)], "tokens": [10] * 4}},
                "qa": {"exact_match": [1.0], "match": [1.0]}}

    items = {"base": item(0.0, 3.0), "export": item(0.1, 3.3), "kq": item(0.05, 3.1), "gg": item(0.02, 3.05)}
    comp = report.comparisons(items, ["kq"], seed=0)
    pairs = set(zip(comp["checkpoint"], comp["against"]))
    assert pairs == {("export", "base"), ("export", "kq"), ("kq", "base"), ("gg", "base"), ("gg", "kq")}
    kl = comp.set_index(["checkpoint", "against", "metric"]).loc[("gg", "kq", "kl_news")]
    assert kl["diff"] == pytest.approx(-0.03) and kl["significant"]
    sizes = pd.DataFrame({"checkpoint": list(items), "disk_bytes": [100, 40, 30, 29]})
    lines = report.against_baselines(sizes, comp, ["kq"], ["kl_news", "ppl_news"])
    assert any(line.startswith("| gg | kq | 0.967 |") and line.endswith("| beats |") for line in lines)
    assert any(line.startswith("| export | kq | 1.333 |") and line.endswith("| kq better |") for line in lines)


def test_previous_step_is_the_checkpoint_it_was_made_from() -> None:
    """export is made from lora, not from eora listed before it: its 'previous step' is lora."""
    item = lambda nll: {"perplexity": {"news": {"nll": [nll * 10 + i for i in range(4)], "tokens": [10] * 4}},  # noqa: E731
                        "qa": {"exact_match": [1.0], "match": [1.0]}}
    items = {"base": item(3.0), "lora": item(3.1), "gptq": item(3.4), "eora": item(3.3), "export": item(3.2)}
    made_from = report.lineage(["gptq=lora", "eora=gptq", "export=lora"])
    pairs = set(zip(*(report.comparisons(items, [], made_from)[c] for c in ("checkpoint", "against"))))
    assert ("export", "lora") in pairs and ("export", "eora") not in pairs and ("lora", "base") in pairs
    assert ("export", "eora") in set(zip(*(report.comparisons(items)[c] for c in ("checkpoint", "against"))))
    with pytest.raises(ValueError, match="CHECKPOINT=SOURCE"):
        report.lineage(["export:lora"])
