"""Reading `params.yaml` and validating its values with errors that name the parameter."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

from ruamel.yaml import YAML


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Return the whole params file as a dict, read as YAML 1.2 like DVC reads it: `dvc exp run -S
    wanda.pattern=2:4` writes `2:4` unquoted, which YAML 1.1 (PyYAML) would read as the base-60 integer 124."""
    with open(path) as f:
        return YAML(typ="safe", pure=True).load(f)


def choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return `value` if it is one of `allowed`, else raise a ValueError naming `name`."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {allowed}")
    return value


def integer(name: str, value: Any, low: float = -math.inf, high: float = math.inf) -> int:
    """Return `value` if it is an integer (not a bool) in [low, high], else raise a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r} must be an integer")
    return int(in_range(name, value, low, high))


def in_range(name: str, value: float, low: float, high: float, *, high_open: bool = False) -> float:
    """Return `value` if low <= value <= high (or < high), else raise a ValueError naming `name`."""
    ok = low <= value < high if high_open else low <= value <= high
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name}={value!r} is out of range; allowed [{low}, {high}{bracket}")
    return value
