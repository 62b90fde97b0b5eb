"""Outputs that appear whole or not at all: write to a temporary sibling `.<name>.XXXX`, then rename.

A killed stage can leave such a sibling behind; the next write of the same output removes it first. Temporary
work of libraries (GPTQModel's offload folder) goes to a sibling `scratch` folder, removed on success and failure.
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


def remove_stale(path: Path) -> None:
    """Remove the temporary siblings `.<name>.*` that an interrupted write of `path` left behind."""
    for stale in path.parent.glob(f".{path.name}.*"):
        shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.chmod(0o777 & ~_umask())
    if path.exists():
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    os.replace(tmp, path)


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file that replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def scratch(path: str | Path) -> Iterator[Path]:
    """A folder `.<name>.scratch` beside the output `path`, used as the process's temporary directory
    (`tempfile` and `TMPDIR`) inside the block and removed afterwards, whatever happens."""
    path = Path(path)
    folder = (path.parent / f".{path.name}.scratch").resolve()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
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


def copy_dir(src: str | Path, out: str | Path) -> None:
    """Copy the folder `src` (a checkpoint) to `out`, atomically."""
    with atomic_dir(out) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_file(path) as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
