"""Outputs appear whole, with ordinary permissions; leftovers of a killed run and temporary work are removed."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from llmshrink.atomic import atomic_dir, atomic_file, copy_dir, scratch


def test_stale_temporary_siblings_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".gptq.k3x9a1").mkdir()  # what `kill -9` during a write leaves
    (tmp_path / ".gptq.k3x9a1" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / ".gptq.scratch").mkdir()
    (tmp_path / ".gptqx.keep").mkdir()  # another output's: untouched
    live = tmp_path / f".gptq.{os.getppid()}.x1"  # a running process's: untouched
    live.mkdir()
    with atomic_dir(tmp_path / "gptq") as tmp, scratch(tmp_path / "gptq"):
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".gptqx.keep", live.name, "gptq"])


def test_a_dvc_workspace_keeps_temporary_folders_in_dvc_tmp(tmp_path: Path) -> None:
    """Nothing of a write lands beside the output, where DVC would hash it into a folder dependency and git would
    list it; what a dead process left in .dvc/tmp/llmshrink is removed by the next write."""
    (tmp_path / ".dvc").mkdir()
    stale = tmp_path / ".dvc" / "tmp" / "llmshrink" / "999999999.lora.abc"
    stale.mkdir(parents=True)
    with atomic_dir(tmp_path / "models" / "lora") as tmp, scratch(tmp_path / "models" / "lora") as work:
        assert tmp.parent == work.parent == stale.parent and not stale.exists()
        assert sorted(p.name for p in (tmp_path / "models").iterdir()) == []
    with atomic_file(tmp_path / "metrics" / "m.json") as f:
        f.write("{}")
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["lora"] and list(stale.parent.iterdir()) == []


def test_failure_leaves_nothing_and_keeps_the_old_output(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "new").write_text("new")
            raise RuntimeError("stage failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (tmp_path / "out" / "old").exists()


def test_outputs_get_the_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
        with atomic_file(tmp_path / "m.json") as f:
            f.write("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644


def test_scratch_is_the_temporary_directory_and_is_removed(tmp_path: Path) -> None:
    before, inductor = tempfile.gettempdir(), os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with pytest.raises(ValueError):
        with scratch(tmp_path / "eora") as work:
            assert tempfile.gettempdir() == str(work) == os.environ["TMPDIR"] and work.is_absolute()
            # torch.compile's cache outlives the block: a later compile in this process reuses its paths
            assert os.environ["TORCHINDUCTOR_CACHE_DIR"].startswith(before)
            tempfile.mkdtemp(prefix="gptqmodel_")  # what GPTQModel's offload does
            raise ValueError("EoRA failed")
    assert not work.exists() and tempfile.gettempdir() == before and list(tmp_path.iterdir()) == []
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") == inductor


def test_copied_checkpoints_are_writable_when_the_source_is_a_read_only_dvc_link(tmp_path: Path) -> None:
    """DVC's hard-linked outputs are read-only; a stage's copy of one must not be, or editing it fails for users."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "config.json").chmod(0o444)
    copy_dir(src, tmp_path / "out")
    assert (tmp_path / "out" / "config.json").stat().st_mode & 0o200
