"""Fault injection: stages killed with SIGKILL, a stalled network, corrupt and truncated files, planted symlinks and
malformed inputs each end in correct behaviour or one clear message (issue 37). Kept fast: tiny models, stages
that fail before their heavy work."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmshrink import params as params_file

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
