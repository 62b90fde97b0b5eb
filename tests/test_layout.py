"""The package's shape: every module imports on its own, and dvc.yaml lists exactly the library files each
stage script imports (directly or through other library modules), so a library change reruns what it affects."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from llmshrink.params import read

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "llmshrink"
MODULES = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                 for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def module_files(dotted: str) -> set[Path]:
    """The library files importing `dotted` runs: the module's own file and the `__init__.py` of each package on the
    way below `llmshrink` (up to the first part that is no module, e.g. a class imported from a module)."""
    files, parts = set(), dotted.split(".")
    for depth in range(2, len(parts) + 1):
        path = ROOT.joinpath(*parts[:depth])
        if (path / "__init__.py").is_file():
            files.add(path / "__init__.py")
        elif path.with_suffix(".py").is_file():
            files.add(path.with_suffix(".py"))
        else:
            break
    return files


def imported_files(path: Path) -> set[Path]:
    """The `llmshrink` files a file imports (`from llmshrink import x`, `from llmshrink.x.y import z`), at any depth."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "llmshrink":
            found |= module_files(node.module)
            found |= {f for a in node.names for f in module_files(f"{node.module}.{a.name}")}
        elif isinstance(node, ast.Import):
            found |= {f for a in node.names if a.name.startswith("llmshrink.") for f in module_files(a.name)}
    return found


def closure(path: Path) -> set[str]:
    """Library files (`llmshrink/<m>.py`, `llmshrink/<package>/<m>.py`) a script needs, transitively."""
    todo, seen = list(imported_files(path)), set()
    while todo:
        file = todo.pop()
        if file not in seen:
            seen.add(file)
            todo += imported_files(file)
    return {f.relative_to(ROOT).as_posix() for f in seen}


def stage_deps() -> dict[str, tuple[str, set[str]]]:
    """Each stage of dvc.yaml (foreach stages once): its script and the llmshrink files among its deps."""
    out = {}
    for name, stage in read(ROOT / "dvc.yaml")["stages"].items():
        stage = stage.get("do", stage)
        module = stage["cmd"].split()[2]  # python -m stages.<name>
        script = module.replace(".", "/") + ".py"
        out[name] = script, {d for d in stage.get("deps", []) if d.startswith("llmshrink/") and d.endswith(".py")}
    return out


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports_on_its_own(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("stage", sorted(stage_deps()))
def test_stage_deps_are_the_import_closure(stage: str) -> None:
    script, listed = stage_deps()[stage]
    needed = closure(ROOT / script)
    assert not needed - listed, f"dvc.yaml stage {stage} misses {sorted(needed - listed)}"
    assert not listed - needed, f"dvc.yaml stage {stage} lists {sorted(listed - needed)}, which {script} never imports"
