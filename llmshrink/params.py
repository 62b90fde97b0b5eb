"""Reading `params.yaml` and validating its values with errors that name the parameter."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Return the whole params file as a dict."""
    with open(path) as f:
        return yaml.safe_load(f)


def choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return `value` if it is one of `allowed`, else raise a ValueError naming `name`."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {allowed}")
    return value


def in_range(name: str, value: float, low: float, high: float, *, high_open: bool = False) -> float:
    """Return `value` if low <= value <= high (or < high), else raise a ValueError naming `name`."""
    ok = low <= value < high if high_open else low <= value <= high
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name}={value!r} is out of range; allowed [{low}, {high}{bracket}")
    return value
