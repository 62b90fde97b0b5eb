"""The DVC wiring itself: `dvc repro` of the whole pipeline on the tiny model in a temporary git repo."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from llmshrink import llamacpp
from llmshrink import params as params_file

pytestmark = pytest.mark.slow  # dvc end to end: `make test-all`, CI

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["prepare_model", "prepare_data", "score_layers", "depth_prune", "width_prune", "lora",
          "quantize", "eora", "imatrix@base", "imatrix@lora", "export", "gptq_base", "kquant_base", "gptq_gguf",
          "reference", "evaluate@base", "evaluate@eora", "evaluate@export", "evaluate@kquant_base",
          "evaluate@gptq_gguf", "benchmark", "report", "explore_layers", "kv_cache"]
QUANTIZER = llamacpp.tool("llama-quantize").is_file()  # built by `make edge`; without it, the converter's types
TINY_OVERRIDES = {
    "model": {"source": "tiny", "dtype": "float32"},
    "prune": {"samples": 2, "seq_len": 64, "layers": 2},
    "wanda": {"samples": 4, "seq_len": 64},
    "lora": {"steps": 3, "batch_size": 2, "seq_len": 64},
    "gptq": {"group_size": 32, "samples": 4, "seq_len": 64},
    "eora": {"samples": 4, "seq_len": 64},
    "imatrix": {"samples": 4, "seq_len": 64},
    "export": {"type": "q4_0" if QUANTIZER else "q8_0"},
    "kquant_base": {"type": "q4_k_m" if QUANTIZER else "q8_0"},
    "gptq_gguf": {"enabled": QUANTIZER, "samples": 4, "seq_len": 64},
    "data": {"qa_eval": 16, "choice_items": 8,  # the tiny run's multiple choice: its QA set and ARC-Easy (shared data)
             "choice_files": {"arc_easy": str(ROOT.parent / "shared" / "data" / "zeroshot" / "arc_easy.jsonl")}
             if (ROOT.parent / "shared" / "data").is_dir() else {}},
    "eval": {"max_windows": 2, "limit": 4, "max_new_tokens": 4},
    "benchmark": {"rounds": 1, "prompt_tokens": 16, "new_tokens": 4, "batch_sizes": [1]},
    "explore": {"max_windows": 2, "limit": 4,
                # anchors: mid = 4 of the tiny model's 8 layers, so skip [5, 6] and repeat layer 4 twice
                "configs": {"base": {}, "skip": {"skip": ["mid+1", "last-1"]}, "repeat": {"repeat": {"mid": 2}}}},
    "kv": {"contexts": [64], "chunk": 16, "decode_tokens": 2,  # the tiny model's heads have 16 channels
           "configs": {"bf16": {}, "int4": {"dtype": "int4", "group": 8, "residual": 16},
                       "sink_window": {"sinks": 2, "window": 30}}},
}


def sh(cwd: Path, *args: str) -> str:
    """Run a command (dvc from this interpreter's environment); fail the test with its output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project in a fresh git repo, params set for the tiny model, reproduced once."""
    repo = tmp_path_factory.mktemp("repo")
    for name in ["dvc.yaml", "params.yaml", "stages", "llmshrink", ".dvc", ".dvcignore", ".gitignore"]:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, repo / name)
    shutil.rmtree(repo / ".dvc" / "cache", ignore_errors=True)
    shutil.rmtree(repo / ".dvc" / "tmp", ignore_errors=True)
    params = params_file.read(repo / "params.yaml")  # YAML 1.2, as DVC reads it
    for section, values in TINY_OVERRIDES.items():
        params[section].update(values)
    params["explore"]["configs"] = TINY_OVERRIDES["explore"]["configs"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    out = sh(repo, "dvc", "repro")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out, stage
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "repro")
    return repo


def test_repro_is_up_to_date_and_idempotent(repo: Path) -> None:
    assert "up to date" in sh(repo, "dvc", "status")
    assert "Running stage" not in sh(repo, "dvc", "repro")
    assert (repo / "models" / "depth" / "config.json").is_file()
    assert yaml.safe_load((repo / "models" / "depth" / "config.json").read_text())["num_hidden_layers"] == 6


MODEL_STAGES = ["prepare_model", "prepare_data", "score_layers", "depth_prune", "width_prune", "lora", "quantize", "eora"]


def test_fresh_clone_reproduces_every_checkpoint_byte_for_byte(repo: Path, tmp_path: Path) -> None:
    """A fresh clone with the committed dvc.lock, no cache: the model-writing stages run from nothing and again
    forced, the second time through the warm runner (stages in forks of one process), and both times their lock
    entries (every dependency and output hash) equal the committed ones; no temporary folder is left beside the
    outputs."""
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    committed = params_file.read(repo / "dvc.lock")["stages"]
    out = sh(clone, "dvc", "repro", "eora")
    # score_layers' only output is in git: its deps come out identical, so DVC rightly does not rerun it
    assert "Stage 'score_layers' didn't change, skipping" in out
    assert all(f"Running stage '{stage}'" in out for stage in MODEL_STAGES if stage != "score_layers")
    for forced in (False, True):
        if forced:
            out = sh(clone, sys.executable, "-m", "llmshrink.warm", "dvc", "repro", "-f", "eora")
            assert "no warm server" not in out
            assert all(f"Running stage '{stage}'" in out for stage in MODEL_STAGES)
        lock = params_file.read(clone / "dvc.lock")["stages"]
        assert {s: lock[s] for s in MODEL_STAGES} == {s: committed[s] for s in MODEL_STAGES}
        assert "up to date" in sh(clone, "dvc", "status", *MODEL_STAGES)
        assert sorted(p.name for p in (clone / "models").iterdir()) == \
            [".gitignore", "base", "depth", "eora", "gptq", "lora", "width"]
    assert sh(clone, "git", "status", "--porcelain").strip() == ""


def test_metrics_show_lists_every_checkpoint(repo: Path) -> None:
    out = sh(repo, "dvc", "metrics", "show")
    for name in ["base", "depth", "width", "lora", "gptq", "eora"]:
        assert f"metrics/eval/{name}.json" in out
    environment = json.loads((repo / "metrics" / "eval" / "base.json").read_text())["environment"]
    assert torch.__version__.startswith(environment["versions"]["torch"]) and environment["hardware"]["cpus"] > 0


def test_changing_prune_layers_does_not_rescore(repo: Path) -> None:
    out = sh(repo, "dvc", "exp", "run", "-S", "prune.layers=1")
    assert "Running stage 'depth_prune'" in out
    assert "Running stage 'evaluate@depth'" in out
    assert "Running stage 'score_layers'" not in out
    assert "Running stage 'prepare_model'" not in out
    assert "Running stage 'evaluate@base'" not in out
    diff = sh(repo, "dvc", "exp", "diff")
    assert "prune.layers" in diff and "metrics/eval/depth.json" in diff


def test_second_clone_reproduces_an_experiment_from_a_remote_run_cache(repo: Path, tmp_path: Path) -> None:
    """One machine runs an experiment and pushes its outputs and run-cache to a (local-directory) remote; a second
    clone pulls the run-cache and reproduces that recipe without running a stage but `report`: DVC keeps no
    run-cache entry for a stage with plain `cache: false` outputs (its tables), so that 5-second stage reruns."""
    remote = tmp_path / "remote"
    sh(repo, "dvc", "exp", "run", "-S", "prune.layers=1")  # cached already if the test above ran
    sh(repo, "dvc", "remote", "add", "--local", "-d", "team", str(remote))
    sh(repo, "dvc", "push", "--all-commits")  # HEAD's outputs: the clone's `dvc pull` fetches them
    assert "objects they point at pushed" in sh(repo, sys.executable, "-m", "llmshrink.sweep", "push-run-cache")
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    sh(clone, "dvc", "remote", "add", "--local", "-d", "team", str(remote))
    sh(clone, "dvc", "pull", "--run-cache")
    out = sh(clone, "dvc", "exp", "run", "--pull", "-S", "prune.layers=1")
    assert [line for line in out.splitlines() if line.startswith("Running stage")] == ["Running stage 'report':"]
    for stage in ["depth_prune", "width_prune", "lora", "quantize", "eora", "evaluate@eora", "benchmark"]:
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in out
    assert params_file.read(clone / "models" / "depth" / "config.json")["num_hidden_layers"] == 7


def test_explore_anchors_resolve_on_the_tiny_model(repo: Path) -> None:
    import csv

    with open(repo / "metrics" / "explore_layers.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["config"], int(r["layers"]), r["order"]) for r in rows] == \
        [("base", 8, "0-7"), ("skip", 6, "0-4,7"), ("repeat", 9, "0-3,4x2,5-7")]
