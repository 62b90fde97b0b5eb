"""Recipe sweeps without running DVC: grid expansion and `-S` rendering, experiment names, queueing commands,
the Pareto frontier and recommendation, and collection from a canned `dvc exp show --json` (DVC 3.x layout)."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from llmshrink import frontier, sweep
from llmshrink.grid import expand, experiments, render
from llmshrink.params import read

ROOT = Path(__file__).resolve().parents[1]
GRID = {"params": {"prune.layers": [0, 2], "wanda.pattern": ["1:8", "2:4", "unstructured:0.5"],
                   "eora.enabled": [True, False]}}


# --- grid -----------------------------------------------------------------------------------------------------

def test_product_in_order_first_key_slowest() -> None:
    combos = expand(GRID)
    assert len(combos) == 2 * 3 * 2
    assert combos[0] == {"prune.layers": 0, "wanda.pattern": "1:8", "eora.enabled": True}
    assert combos[1] == {"prune.layers": 0, "wanda.pattern": "1:8", "eora.enabled": False}
    assert combos[2]["wanda.pattern"] == "2:4" and combos[6]["prune.layers"] == 2
    assert combos == expand(GRID)


def test_exclusions_drop_combinations_matching_every_key_and_fixed_applies_to_all() -> None:
    grid = {**GRID, "exclude": [{"prune.layers": 0, "wanda.pattern": "2:4"}, {"eora.enabled": False}],
            "fixed": {"gptq.bits": 8, "lora.dataset": "triviaqa"}}
    combos = expand(grid)
    assert len(combos) == 2 * 3 - 1
    assert all(c["eora.enabled"] is True and c["gptq.bits"] == 8 and c["lora.dataset"] == "triviaqa" for c in combos)
    assert {"prune.layers": 0, "wanda.pattern": "2:4"}.items() not in [c.items() for c in combos]
    assert any(c["prune.layers"] == 2 and c["wanda.pattern"] == "2:4" for c in combos)


def test_exclusion_is_type_strict_true_is_not_one() -> None:
    grid = {"params": {"prune.layers": [0, 1], "eora.enabled": [True, False]}, "exclude": [{"eora.enabled": True}]}
    assert [c["eora.enabled"] for c in expand(grid)] == [False, False]


def test_shipped_grids() -> None:
    thesis, cpu = (expand(read(ROOT / "sweeps" / f"{n}.yaml")) for n in ("thesis", "cpu"))
    assert len(thesis) == 3 * (1 + 4) * 2 * 2 * 2 == 120
    assert not any(c["wanda.enabled"] is False and c["wanda.pattern"] != "1:8" for c in thesis)
    assert len(cpu) == 12 and all(c["gptq.bits"] == 4 for c in cpu)
    defaults = read(ROOT / "params.yaml")
    for exp_name, assignment in experiments(read(ROOT / "sweeps" / "thesis.yaml"), "thesis"):
        sweep.validate(assignment, defaults, exp_name)


@pytest.mark.parametrize("grid, key", [
    ([1, 2], "mapping"),
    ({"params": {"prune.layers": [1]}, "excludes": []}, "'excludes'"),
    ({"params": {}}, "params"),
    ({"params": {"prune.layers": 2}}, "params.prune.layers"),
    ({"params": {"prune.layers": []}}, "params.prune.layers"),
    ({"params": {"prune.layers": [2, 2]}}, "params.prune.layers lists 2 twice"),
    ({"params": {"lora.targets": [{"a": 1}]}}, "params.lora.targets"),
    ({"params": {"prune.layers": [1], "gptq.bits": [4]}, "exclude": [{"gptq.bit": 4}]}, "exclude[0].gptq.bit"),
    ({"params": {"gptq.bits": [4, 8]}, "exclude": [{"gptq.bits": 3}]}, "exclude[0].gptq.bits=3"),
    ({"params": {"gptq.bits": [4]}, "exclude": {"gptq.bits": 4}}, "exclude"),
    ({"params": {"gptq.bits": [4]}, "fixed": {"gptq.bits": 8}}, "fixed.gptq.bits"),
    ({"params": {"gptq.bits": [4]}, "fixed": ["gptq.bits"]}, "fixed"),
])
def test_malformed_grid_names_the_key(grid: Any, key: str) -> None:
    with pytest.raises(ValueError, match=re.escape(key)):
        expand(grid)


@pytest.mark.parametrize("value, text", [
    ("2:4", "2:4"), ("unstructured:0.5", "unstructured:0.5"), ("wikitext", "wikitext"), (True, "true"),
    (False, "false"), (None, "null"), (4, "4"), (0.5, "0.5"), ("4", "'4'"), ("true", "'true'"), ("a,b", "'a,b'"),
    (["q_proj", "k_proj"], "[q_proj,k_proj]"), ([], "[]"),
])
def test_values_render_as_dvc_set_param(value: Any, text: str) -> None:
    assert render(value) == text


def test_grid_file_reads_as_yaml_1_2(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("params:\n  wanda.pattern: [2:4, 1:8]\n  eora.enabled: [true, false]\n  eval.limit: [null]\n")
    first = expand(read(path))[0]
    assert first == {"wanda.pattern": "2:4", "eora.enabled": True, "eval.limit": None}
    assert sweep.command("x", first) == ["dvc", "exp", "run", "--queue", "--name", "x", "-S", "wanda.pattern=2:4",
                                         "-S", "eora.enabled=true", "-S", "eval.limit=null"]


# --- names and queueing ---------------------------------------------------------------------------------------

def test_names_readable_valid_git_refs_and_unique() -> None:
    exps = experiments(read(ROOT / "sweeps" / "thesis.yaml"), "thesis")
    names = [n for n, _ in exps]
    assert "L2-w1_8-wikitext-b4-eoraT" in names and "L4-wandaoff-triviaqa-b8-eoraF" in names
    assert "L0-wunstructured_0_5-wikitext-b4-eoraT" in names
    assert len(set(names)) == len(names) == 120
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", n) for n in names)
    for n in names[:5]:  # DVC's rule: a valid Git ref under refs/exps/<baseline>/
        assert subprocess.run(["git", "check-ref-format", f"refs/exps/ab/cdef/{n}"]).returncode == 0


def test_colliding_names_and_nothing_varied() -> None:
    grid = {"params": {"prune.layers": [0], "wanda.enabled": [True, False], "wanda.pattern": ["1:8", "2:4"]}}
    with pytest.raises(ValueError, match="'wandaoff'"):  # WANDA off ignores the pattern: exclude all but one
        experiments(grid, "g")
    assert experiments({"params": {"prune.layers": [3]}}, "single") == [("single", {"prune.layers": 3})]


def test_validate_against_the_params_schema() -> None:
    defaults = read(ROOT / "params.yaml")
    sweep.validate({"wanda.pattern": "2:4", "gptq.bits": 8}, defaults, "ok")
    with pytest.raises(ValueError, match=r"bad: wanda.pattern='3:2'"):
        sweep.validate({"wanda.pattern": "3:2"}, defaults, "bad")
    with pytest.raises(ValueError, match="typo: prune.layer is not a param"):
        sweep.validate({"prune.layer": 2}, defaults, "typo")


def test_queue_submits_to_dvcs_queue_then_starts_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text("params:\n  prune.layers: [0, 2]\nfixed:\n  wanda.pattern: 2:4\n")
    ran: list[list[str]] = []
    monkeypatch.setattr(sweep.subprocess, "run", lambda cmd, check: ran.append(cmd))
    assert sweep.queue(grid, jobs=2, run=False, dry_run=True, params_path=ROOT / "params.yaml") and not ran
    sweep.queue(grid, jobs=2, run=True, params_path=ROOT / "params.yaml")
    outside = [a for k, v in sweep.outside_paths(read(ROOT / "params.yaml"), ROOT).items() for a in ("-S", f"{k}={v}")]
    assert ran == [["dvc", "exp", "run", "--queue", "--name", "L0", "-S", "prune.layers=0", "-S", "wanda.pattern=2:4", *outside],
                   ["dvc", "exp", "run", "--queue", "--name", "L2", "-S", "prune.layers=2", "-S", "wanda.pattern=2:4", *outside],
                   ["dvc", "queue", "start", "-j", "2"]]


def test_targets_limit_each_experiment_to_named_stages(tmp_path: Path) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text("params: {prune.layers: [0, 2]}\ntargets: [evaluate@eora, benchmark]\n")
    cmds = sweep.queue(grid, dry_run=True, params_path=ROOT / "params.yaml")
    assert [c[-2:] for c in cmds] == [["evaluate@eora", "benchmark"]] * 2
    grid.write_text("params: {prune.layers: [0, 2]}\ntargets: [evaluate@nothing, benchmarks]\n")
    with pytest.raises(ValueError, match="'benchmarks' is not a stage of dvc.yaml"):
        sweep.queue(grid, dry_run=True, params_path=ROOT / "params.yaml")


def test_paths_out_of_the_repository_are_queued_absolute(tmp_path: Path) -> None:
    """A queued experiment runs in a copy under .dvc/tmp/exps, where `../shared/...` would not resolve."""
    (tmp_path / "repo").mkdir()
    defaults = {"data": {"choice_files": {"arc": "../shared/arc.jsonl"}, "local": {"qa": "data/qa.jsonl"}}, "seed": 0}
    assert sweep.outside_paths(defaults, tmp_path / "repo") == {"data.choice_files.arc": str(tmp_path / "shared" / "arc.jsonl")}
    grid = tmp_path / "g.yaml"
    grid.write_text("params: {prune.layers: [0, 2]}\n")
    (cmd, _) = sweep.queue(grid, dry_run=True, params_path=ROOT / "params.yaml")
    assert f"data.choice_files.arc_easy={ROOT.parent / 'shared' / 'data' / 'zeroshot' / 'arc_easy.jsonl'}" in cmd


def test_cli_dry_run_prints_commands(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    sweep.main(["queue", "sweeps/cpu.yaml", "--dry-run", "--start", "-j", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 13 and lines[-1] == "dvc queue start -j 1"
    assert lines[0].startswith("dvc exp run --queue --name L2-w1_8-eoraT -S prune.layers=2 -S wanda.enabled=true")


# --- frontier -------------------------------------------------------------------------------------------------

ROWS = pd.DataFrame({
    "experiment": ["a", "a_tie", "dominated", "smallest", "best_ppl", "worse_acc"],
    "disk_bytes_vs_base": [0.5, 0.5, 0.6, 0.3, 0.9, 0.5],
    "ppl_news": [10.0, 10.0, 12.0, 20.0, 9.0, 10.0],
    "qa_acc": [0.5, 0.5, 0.4, 0.3, 0.5, 0.45],
})
for _col in ("ppl_news", "qa_acc"):
    ROWS[f"{_col}_lo"], ROWS[f"{_col}_hi"] = ROWS[_col] * 0.9, ROWS[_col] * 1.1


def test_pareto_keeps_ties_and_drops_dominated() -> None:
    front = frontier.pareto(ROWS, "disk_bytes_vs_base", {"ppl_news": "min", "qa_acc": "max"})
    assert front.tolist() == [True, True, False, True, True, False]
    # on accuracy alone the smaller equally accurate row beats best_ppl
    assert not frontier.pareto(ROWS, "disk_bytes_vs_base", {"qa_acc": "max"})[4]
    with pytest.raises(ValueError, match="'lower'"):
        frontier.pareto(ROWS, "disk_bytes_vs_base", {"qa_acc": "lower"})


def test_quality_columns_and_recommendation_under_budget() -> None:
    assert frontier.quality_columns(ROWS) == {"ppl_news": "min", "qa_acc": "max"}
    assert frontier.recommend(ROWS, 0.55)["experiment"] == "a"  # first of the tie
    assert frontier.recommend(ROWS, 1.0)["experiment"] == "best_ppl"
    assert frontier.recommend(ROWS, 0.4)["experiment"] == "smallest"
    assert frontier.recommend(ROWS, 0.65, primary="qa_acc")["experiment"] == "a"
    assert frontier.recommend(ROWS, 0.2) is None


def evaluation(disk: int, ppl: float, acc: float) -> dict[str, Any]:
    """metrics/eval/<checkpoint>.json in the layout of llmshrink/evaluate.py."""
    return {"size": {"params": 100, "params_nonzero": 90, "disk_bytes": disk, "weight_bytes_fp16": 200},
            "perplexity": {"news": {"ppl": ppl, "ci95": [ppl - 1, ppl + 1], "tokens": 1000, "windows": 2,
                                    "seq_len": 512, "domain": "out", "dataset": "news", "protocol": "standard"}},
            "qa": {"exact_match": acc, "match": acc + 0.1, "n": 200, "ci95": [acc - 0.05, acc + 0.05],
                   "match_ci95": [acc + 0.05, acc + 0.15]},
            "choice": {"arc_easy": {"acc": acc, "acc_norm": acc, "ci95": [acc - 0.1, acc + 0.1],
                                    "acc_norm_ci95": [acc - 0.1, acc + 0.1], "n": 200, "chance": 0.25}}}


def numeric(tree: Any) -> Any:
    """What DVC keeps of a metrics file: numbers and strings; lists (the intervals) are dropped."""
    if isinstance(tree, dict):
        kept = {k: numeric(v) for k, v in tree.items()}
        return {k: v for k, v in kept.items() if v not in (None, {})}
    return tree if isinstance(tree, (int, float, str)) else None


def exp_state(rev: str, name: str | None, layers: int, pattern: str, files: dict[str, Any] | None) -> dict[str, Any]:
    """One ExpState of `dvc exp show --json` (dvc/repo/experiments/serialize.py)."""
    metrics = {path: {"data": numeric(data)} for path, data in (files or {}).items()} or {
        frontier.FINAL: {"error": {"type": "FileNotFoundError", "msg": "[Errno 2] No such file or directory"}}}
    return {"rev": rev, "name": name, "error": None, "experiments": None,
            "data": {"rev": rev, "timestamp": "2025-01-01T00:00:00",
                     "params": {"params.yaml": {"data": {"seed": 0, "prune": {"layers": layers, "samples": 8},
                                                         "wanda": {"pattern": pattern, "modules": ["q_proj"]}}}},
                     "metrics": metrics, "deps": {}, "outs": {}, "meta": {}}}


def exp_range(state: dict[str, Any], executor: str | None) -> dict[str, Any]:
    local = {"root": None, "log": None, "pid": None, "returncode": None, "task_id": state["rev"]}
    return {"revs": [state], "name": state["name"],
            "executor": executor and {"state": executor, "name": "dvc-task", "local": local}}


def files(disk: int, ppl: float, acc: float, decode: float, benchmarked: str) -> dict[str, Any]:
    """The committed files of one commit; its dvc.lock's benchmark measured the model hashed `benchmarked`."""
    lock = {"stages": {"eora": {"outs": [{"path": "models/eora", "md5": f"{disk}.dir"}]},
                       "benchmark": {"deps": [{"path": "models/base", "md5": "base.dir"},
                                              {"path": "models/eora", "md5": benchmarked}]}}}
    return {frontier.FINAL: evaluation(disk, ppl, acc), frontier.BASE: evaluation(1000, 10.0, 0.5), "dvc.lock": lock,
            frontier.BENCHMARK: {"machine": {"device": "cpu"},
                              "checkpoints": {"base": {"decode_vs_base": 1.0}, "eora": {"decode_vs_base": decode}}}}


# the last experiment did not run the benchmark: it carries the baseline's, which measured another model
COMMITTED = {"b" * 40: files(1000, 10.0, 0.5, 1.0, "1000.dir"), "1" * 40: files(300, 14.0, 0.3, 1.8, "300.dir"),
             "2" * 40: files(500, 12.0, 0.45, 1.4, "500.dir"), "3" * 40: files(600, 13.0, 0.4, 1.0, "1000.dir")}


@pytest.fixture
def dvc_exp_show(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """A canned `dvc exp show --json` (workspace, baseline `main` with four experiments: three finished, one
    queued, one failed) and `git show <rev>:<path>` of the committed metrics files."""
    finished = [exp_state(rev, f"L{layers}-{pattern.replace(':', '_')}", layers, pattern, COMMITTED[rev])
                for rev, layers, pattern in (("1" * 40, 4, "2:4"), ("2" * 40, 2, "2:4"), ("3" * 40, 2, "1:8"))]
    baseline = exp_state("b" * 40, "main", 2, "1:8", COMMITTED["b" * 40])
    baseline["experiments"] = [exp_range(finished[0], None), exp_range(finished[1], "success"),
                               exp_range(finished[2], None),
                               exp_range(exp_state("4" * 40, "L0-queued", 0, "1:8", None), "queued"),
                               exp_range(exp_state("5" * 40, "L6-failed", 6, "1:8", None), "failed")]
    show = [{**exp_state("workspace", None, 2, "1:8", COMMITTED["b" * 40]), "name": None}, baseline]

    def run(cmd: list[str], check: bool, capture_output: bool, text: bool) -> subprocess.CompletedProcess:
        if cmd[:4] == ["dvc", "exp", "show", "--json"]:
            return subprocess.CompletedProcess(cmd, 0, json.dumps(show), "")
        assert cmd[:2] == ["git", "show"]
        rev, path = cmd[2].split(":", 1)
        if path not in COMMITTED.get(rev, {}):
            raise subprocess.CalledProcessError(128, cmd)
        return subprocess.CompletedProcess(cmd, 0, json.dumps(COMMITTED[rev][path]), "")

    monkeypatch.setattr(frontier.subprocess, "run", run)
    return show


def test_collect_one_row_per_finished_experiment(dvc_exp_show: list[dict[str, Any]]) -> None:
    df = frontier.collect().set_index("experiment")
    assert list(df.index) == ["main", "L4-2_4", "L2-2_4", "L2-1_8"]  # no workspace, queued or failed
    assert [c for c in df.columns if "." in c] == ["prune.layers", "wanda.pattern"]  # only params that differ
    assert df.loc["L4-2_4", "disk_bytes"] == 300 and df.loc["L4-2_4", "disk_bytes_vs_base"] == pytest.approx(0.3)
    assert df.loc["L4-2_4", "decode_vs_base"] == pytest.approx(1.8) and df.loc["L4-2_4", "rev"] == "1111111"
    assert pd.isna(df.loc["L2-1_8", "decode_vs_base"])  # its benchmark.json measured the baseline's model
    assert (df.loc["L2-2_4", ["ppl_news", "ppl_news_lo", "ppl_news_hi"]] == [12.0, 11.0, 13.0]).all()
    assert df.loc["L2-2_4", ["qa_match", "qa_match_lo", "qa_match_hi"]].tolist() == pytest.approx([0.55, 0.5, 0.6])
    assert df.loc["L2-1_8", "arc_easy_acc_norm_hi"] == pytest.approx(0.5)
    assert frontier.quality_columns(df) == {"ppl_news": "min", "qa_exact_match": "max", "qa_match": "max",
                                         "arc_easy_acc": "max", "arc_easy_acc_norm": "max"}


def test_collect_reads_the_given_baselines(dvc_exp_show: list[dict[str, Any]],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    run = frontier._run
    monkeypatch.setattr(frontier, "_run", lambda cmd: calls.append(cmd) or run(cmd))
    assert len(frontier.collect(["abc1234", "main"])) == len(frontier.collect()) == 4
    assert [c[4:] for c in calls if c[:2] == ["dvc", "exp"]] == [["--rev", "abc1234", "--rev", "main"], []]


def test_collect_leaves_out_rows_evaluated_otherwise(dvc_exp_show: list[dict[str, Any]],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A baseline evaluated on more windows than its sweep's experiments is not comparable with them."""
    dvc_exp_show[1]["data"]["params"]["params.yaml"]["data"]["eval"] = {"max_windows": 33}
    df = frontier.collect()
    assert list(df["experiment"]) == ["L4-2_4", "L2-2_4", "L2-1_8"]
    assert "left out main" in capsys.readouterr().out
    assert "eval.max_windows" not in df.columns


def test_frontier_writes_csv_summary_and_plots(dvc_exp_show: list[dict[str, Any]], tmp_path: Path) -> None:
    out = tmp_path / "metrics" / "frontier.csv"
    frontier.write(out, 0.55)
    df = pd.read_csv(out).set_index("experiment")
    assert df["pareto"].to_dict() == {"main": True, "L4-2_4": True, "L2-2_4": True, "L2-1_8": False}
    md = out.with_suffix(".md").read_text()
    assert "**L2-2_4**" in md and "L2-1_8" not in md
    plots = sorted(p.name for p in (tmp_path / "metrics" / "plots" / "frontier").iterdir())
    assert plots == [f"size_vs_{k}.png" for k in sorted(frontier.quality_columns(df))]


def test_frontier_keeps_a_table_of_more_experiments_unless_forced(dvc_exp_show: list[dict[str, Any]],
                                                                  tmp_path: Path) -> None:
    """An empty `dvc exp show` (experiments not pulled) finds the baseline alone: the 4-row table stays."""
    out = tmp_path / "frontier.csv"
    frontier.write(out, 0.55)
    written = out.read_bytes(), out.with_suffix(".md").read_bytes()
    dvc_exp_show[1]["experiments"] = []
    with pytest.raises(ValueError, match=r"frontier\.csv holds 4 experiments and `dvc exp show` finds 1.*--force"):
        frontier.write(out, 0.55)
    assert (out.read_bytes(), out.with_suffix(".md").read_bytes()) == written
    assert len(frontier.write(out, 0.55, force=True)) == len(pd.read_csv(out)) == 1
