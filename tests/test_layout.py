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
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def imported_modules(path: Path) -> set[str]:
    """The `llmshrink` modules a file imports (`from llmshrink import x`, `from llmshrink.x import y`), at any depth."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "llmshrink":
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llmshrink."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("llmshrink.")}
    return found


def closure(path: Path) -> set[str]:
    """Library files (`llmshrink/<m>.py`) a script needs, transitively."""
    todo, seen = list(imported_modules(path)), set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += imported_modules(PACKAGE / f"{m}.py")
    return {f"llmshrink/{m}.py" for m in seen}


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
    done = subprocess.run([sys.executable, "-c", f"import llmshrink.{module}"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("stage", sorted(stage_deps()))
def test_stage_deps_are_the_import_closure(stage: str) -> None:
    script, listed = stage_deps()[stage]
    needed = closure(ROOT / script)
    assert not needed - listed, f"dvc.yaml stage {stage} misses {sorted(needed - listed)}"
    assert not listed - needed, f"dvc.yaml stage {stage} lists {sorted(listed - needed)}, which {script} never imports"
