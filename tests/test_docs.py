"""The documentation's contracts: README.md stays short, every params.yaml key is in docs/parameters.md, every
relative link of README.md and docs/ resolves, every benchmark script is in benchmarks/README.md and every result
file records its commit."""
from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from llmshrink.params import read
from llmshrink.params.sections import SECTIONS

ROOT = Path(__file__).resolve().parents[1]
# params whose entries are user-chosen names (task names, configuration names), not schema keys
NAMED = {"data.choice_files", "explore.configs", "kv.configs"}
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md",
         ROOT / "sweeps" / "README.md"]


def param_keys(tree: dict, prefix: str = "") -> set[str]:
    """Every dotted key of params.yaml, down to the leaves, not into NAMED mappings."""
    keys = set()
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys.add(dotted)
        if isinstance(value, dict) and dotted not in NAMED:
            keys |= param_keys(value, f"{dotted}.")
    return keys


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 200, f"README.md has {lines} lines; depth goes to docs/"


def test_every_param_is_documented() -> None:
    page = (ROOT / "docs" / "parameters.md").read_text(encoding="utf-8")
    schema = {f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls) if f.init}
    missing = sorted(k for k in param_keys(read(ROOT / "params.yaml")) | schema if f"`{k}`" not in page)
    assert not missing, f"docs/parameters.md does not document {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not (page.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, f"{page.name} links to missing files {broken}"


def test_every_benchmark_script_is_indexed() -> None:
    index = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in sorted((ROOT / "benchmarks").glob("*.py")) if f"`{p.name}`" not in index]
    assert not missing, f"benchmarks/README.md does not describe {missing}"


@pytest.mark.parametrize("result", sorted((ROOT / "benchmarks" / "results").glob("*.json")), ids=lambda p: p.name)
def test_every_result_records_where_it_came_from(result: Path) -> None:
    data = json.loads(result.read_text(encoding="utf-8"))
    missing = [k for k in ("commit", "hardware", "command", "date") if not data.get(k)]
    assert not missing, f"{result.name} lacks {missing}"


def test_provenance_names_commit_machine_command_date_and_versions() -> None:
    from llmshrink.benchmark import PROVENANCE, VERSIONED, provenance

    record = provenance()
    assert tuple(record) == PROVENANCE
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", record["commit"]), record["commit"]
    assert record["hardware"]["cpus"] >= 1 and record["command"].startswith("python ")
    assert set(record["versions"]) == set(VERSIONED) and record["versions"]["torch"]
