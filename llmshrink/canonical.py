"""Checkpoint folders as a pure function of their inputs: the metadata libraries write with temporary paths, set
order or wall times made canonical, so a rerun writes the same bytes and DVC sees no change."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

VOLATILE_KEYS = ("offload_to_disk_path",)  # GPTQModel writes a random temporary folder here
SORTED_LISTS = ("target_modules",)  # peft writes a set, in hash order


def _canonical(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: sorted(v) if k in SORTED_LISTS and isinstance(v, list) else _canonical(v)
                for k, v in obj.items() if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [_canonical(v) for v in obj]
    return obj


def _has_unstable_keys(obj: Any) -> bool:
    if isinstance(obj, dict):
        return any(k in SORTED_LISTS + VOLATILE_KEYS or _has_unstable_keys(v) for k, v in obj.items())
    return isinstance(obj, list) and any(map(_has_unstable_keys, obj))


def canonicalize(out_dir: str | Path) -> None:
    """Make a checkpoint folder a pure function of its inputs: no temporary paths or set-ordered lists in its
    JSON files, and GPTQModel's quant_log.csv sorted by layer and module, without its wall-time column."""
    for file in Path(out_dir).rglob("*.json"):
        obj = json.loads(file.read_text(encoding="utf-8"))
        canonical = _canonical(obj)
        # rewritten whenever it holds such a key, not only when the order differs: the text must not depend on
        # whether the set happened to come out sorted (peft writes no final newline)
        if canonical != obj or _has_unstable_keys(obj):
            file.write_text(json.dumps(canonical, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log = Path(out_dir) / "quant_log.csv"
    if log.is_file():
        header, *rows = list(csv.reader(log.read_text(encoding="utf-8").splitlines()))
        keep = [i for i, h in enumerate(header) if h != "time"]
        rows.sort(key=lambda r: (int(r[0]) if r[0].isdigit() else -1, r[1]))
        with open(log, "w", newline="", encoding="utf-8") as f:
            csv.writer(f, lineterminator="\n").writerows([[r[i] for i in keep] for r in [header, *rows]])
