"""Outputs that appear whole or not at all: write to a temporary folder on the output's filesystem, then rename.

In a DVC workspace the temporary folders are `.dvc/tmp/llmshrink/<pid>.<name>.XXXX`, out of git's and DVC's sight
(nothing of a killed stage lands in `models/`, where it would join the hash of a stage that depends on the folder);
the next write in the workspace removes those of dead processes. Elsewhere they are siblings `.<name>.<pid>.XXXX`,
removed by the next write of the same output. Temporary work of libraries (GPTQModel's offload folder) goes to such a
`scratch` folder, removed on success and failure.
"""
from __future__ import annotations

import json
import getpass
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


WORKSPACE_TMP = Path(".dvc", "tmp", "llmshrink")  # git-ignored by DVC's own .dvc/.gitignore, never hashed by DVC


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


def temp_dir(path: str | Path, suffix: str = "") -> Path:
    """A new folder for temporary work of this process on the output `path`, on its filesystem: in the
    `WORKSPACE_TMP` of the DVC workspace that holds `path`, else beside `path` as `.<name>.<pid>.XXXX`; what dead
    processes left there is removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parent = path.parent.resolve()
    root = next((p for p in (parent, *parent.parents) if (p / ".dvc").is_dir()), None)
    if root is None or root.stat().st_dev != parent.stat().st_dev:
        folder, prefix, tag = path.parent, f".{path.name}.", f".{path.name}.{os.getpid()}."
    else:
        folder, prefix, tag = root / WORKSPACE_TMP, "", f"{os.getpid()}.{path.name}."
        folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{prefix}*"):
        pid = stale.name.removeprefix(prefix).split(".")[0]
        if not (pid.isdigit() and _alive(int(pid))):
            _remove(stale)
    return Path(tempfile.mkdtemp(prefix=tag, suffix=suffix, dir=folder))


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only if the block succeeds."""
    path = Path(path)
    tmp = temp_dir(path)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.chmod(0o777 & ~_umask())
    if path.exists():
        _remove(path)
    os.replace(tmp, path)


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file that replaces `path` only if the block succeeds."""
    path = Path(path)
    folder = temp_dir(path)
    tmp = folder / path.name
    try:
        with open(tmp, mode) as f:
            yield f
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def scratch(path: str | Path) -> Iterator[Path]:
    """A `temp_dir` of the output `path` (suffix `.scratch`), used as the process's temporary directory
    (`tempfile` and `TMPDIR`) inside the block and removed afterwards, whatever happens."""
    folder = temp_dir(path, ".scratch").resolve()
    # torch.compile's cache stays where it was: it outlives the block, and its precompiled-header folder is fixed
    # from the temporary directory when torch._inductor.codecache is first imported, so import that first
    if "torch" in sys.modules:
        import torch._inductor.codecache  # noqa: F401
    inductor = os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
    saved = {k: os.environ.get(k) for k in ("TMPDIR", "TORCHINDUCTOR_CACHE_DIR")}
    saved_tempdir = tempfile.tempdir
    tempfile.tempdir, os.environ["TMPDIR"] = str(folder), str(folder)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", inductor)
    try:
        yield folder
    finally:
        tempfile.tempdir = saved_tempdir
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(folder, ignore_errors=True)


def copy_tree(src: str | Path, dst: str | Path) -> None:
    """Copy the folder `src` into `dst` as plain, writable files (DVC's linked outputs are read-only)."""
    shutil.copytree(src, dst, dirs_exist_ok=True, copy_function=shutil.copyfile)


def copy_dir(src: str | Path, out: str | Path) -> None:
    """Copy the folder `src` (a checkpoint) to `out`, atomically."""
    with atomic_dir(out) as tmp:
        copy_tree(src, tmp)


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_file(path) as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
