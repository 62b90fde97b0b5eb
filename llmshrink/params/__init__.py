"""`params.yaml` as one typed, validated schema per section; every error names the parameter and what is allowed.

This module holds what every section shares: reading the file, the validators and `load`. Each section's frozen
dataclass lives in a module of its concern (`llmshrink.params.depth`, `.width`, `.gguf`, ...), so a stage imports,
and dvc.yaml lists, only the sections it reads. A stage calls `load(<Section>)` once, before any heavy work; checks
that need the model (a layer count, a matrix width) live with the algorithm and also run before the heavy work.
"""
from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable, TypeVar

from ruamel.yaml import YAML

DTYPES = ("float32", "bfloat16", "float16")
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
Section = TypeVar("Section")  # a section's dataclass; its SECTION names its part of params.yaml


class InputError(RuntimeError):
    """An input that is not what it must be (a corrupt or truncated file, an unreachable or tampered download), with
    a message naming it: stages report it, like a ValueError of a parameter, as one line (stages/__init__.py)."""


def read(path: str | Path = "params.yaml") -> dict[str, Any]:
    """The whole params file as a dict, read as YAML 1.2 like DVC reads it: `dvc exp run -S
    wanda.pattern=2:4` writes `2:4` unquoted, which YAML 1.1 (PyYAML) would read as the base-60 integer 124."""
    with open(path) as f:
        return YAML(typ="safe", pure=True).load(f)


def choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """`value` if it is one of `allowed`, else a ValueError naming `name`."""
    allowed = list(allowed)
    if value not in allowed or (isinstance(value, bool) and not any(a is value for a in allowed)):
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {allowed}")
    return value


def in_range(name: str, value: Any, low: float, high: float, *, high_open: bool = False, low_open: bool = False) -> float:
    """`value` if it is a number within the bounds, else a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} must be a number")
    ok = (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not ok:
        raise ValueError(f"{name}={value!r} is out of range; allowed {'(' if low_open else '['}{low}, {high}"
                         f"{')' if high_open else ']'}")
    return value


def integer(name: str, value: Any, low: float = -math.inf, high: float = math.inf) -> int:
    """`value` if it is an integer (not a bool) in [low, high], else a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r} must be an integer")
    return int(in_range(name, value, low, high))


def cap(name: str, value: Any) -> int | None:
    """A cap on items: null (no cap) or an integer >= 1."""
    return None if value is None else integer(name, value, 1)


def flag(name: str, value: Any) -> bool:
    return choice(name, value, (True, False))


def names(name: str, value: Any, allowed: Iterable[str]) -> tuple[str, ...]:
    """A non-empty list of names out of `allowed`, as a tuple in the given order."""
    allowed = list(allowed)
    if isinstance(value, str) or not isinstance(value, list) or not value:
        raise ValueError(f"{name}={value!r} must be a non-empty list out of {allowed}")
    return tuple(choice(name, v, allowed) for v in value)


def _build(cls: type[Section], section: str, raw: Any) -> Section:
    """`cls(**raw)` after checking that `raw` is a mapping with exactly the fields of `cls`."""
    if not isinstance(raw, dict):
        raise ValueError(f"{section}={raw!r} must be a mapping")
    known = [f.name for f in fields(cls) if f.init]
    unknown = sorted(map(str, set(raw) - set(known)))
    if unknown:
        raise ValueError(f"{section}.{unknown[0]} is not a parameter; {section} has {known}")
    missing = [k for k in known if k not in raw]
    if missing:
        raise ValueError(f"{section}.{missing[0]} is missing from params.yaml")
    return cls(**raw)


def load(section: type[Section], path: str | Path = "params.yaml") -> Section:
    """The validated section `section.SECTION` of the params file, as an instance of `section`."""
    raw = read(path)
    if section.SECTION not in raw:
        raise ValueError(f"params.yaml has no section {section.SECTION!r}")
    return _build(section, section.SECTION, raw[section.SECTION])


def load_seed(path: str | Path = "params.yaml") -> int:
    """The pipeline's one seed, an integer >= 0."""
    raw = read(path)
    if "seed" not in raw:
        raise ValueError("params.yaml has no section 'seed'")
    return integer("seed", raw["seed"], 0)
