"""Sweep grids (`sweeps/<name>.yaml`): checking and expanding a grid, naming its experiments, and writing each
value as a `dvc exp run -S key=value` that DVC reads back unchanged.

A grid: `params` maps a dotted param to its list of values (the product is swept), `exclude` lists partial
assignments (a combination matching every key of one is dropped), `fixed` maps params set in every experiment,
`targets` names the dvc.yaml stages to run (none: the whole pipeline).
"""
from __future__ import annotations

import functools
import itertools
import json
import re
from typing import Any, Iterable

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException

GRID_KEYS = ("params", "exclude", "fixed", "targets")
KEY = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*")
# name prefix of a swept param's value; others use the last part of their dotted name
LABELS = {"prune.layers": "L", "wanda.enabled": "wanda", "wanda.pattern": "w", "lora.dataset": "",
          "gptq.bits": "b", "eora.enabled": "eora"}


def _same(a: Any, b: Any) -> bool:
    """Equal as params: `true` is not `1`."""
    return a == b and isinstance(a, bool) is isinstance(b, bool)


def _check_value(where: str, value: Any) -> None:
    scalar = (str, int, float, bool, type(None))
    if not isinstance(value, scalar) and not (isinstance(value, list) and all(isinstance(v, scalar) for v in value)):
        raise ValueError(f"{where}={value!r}: a value must be a string, number, boolean, null or list of those")


def _check(grid: Any) -> None:
    """A ValueError naming the first malformed part of `grid`."""
    if not isinstance(grid, dict):
        raise ValueError(f"a sweep grid must be a mapping with keys {list(GRID_KEYS)}, not {type(grid).__name__}")
    unknown = [k for k in grid if k not in GRID_KEYS]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a grid key; allowed {list(GRID_KEYS)}")
    axes = grid.get("params")
    if not isinstance(axes, dict) or not axes:
        raise ValueError("params must be a non-empty mapping of dotted param -> list of values")
    for key, values in axes.items():
        if not isinstance(key, str) or not KEY.fullmatch(key):
            raise ValueError(f"params.{key}: not a dotted param name like prune.layers")
        if not isinstance(values, list) or not values:
            raise ValueError(f"params.{key}={values!r} must be a non-empty list of values")
        for i, v in enumerate(values):
            _check_value(f"params.{key}", v)
            if any(_same(v, w) for w in values[:i]):
                raise ValueError(f"params.{key} lists {v!r} twice")
    exclude = grid.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(e, dict) and e for e in exclude):
        raise ValueError("exclude must be a list of non-empty mappings of param -> value")
    for i, e in enumerate(exclude):
        for key, value in e.items():
            if key not in axes:
                raise ValueError(f"exclude[{i}].{key} is not a swept param; params has {list(axes)}")
            if not any(_same(value, v) for v in axes[key]):
                raise ValueError(f"exclude[{i}].{key}={value!r} is not among params.{key} {axes[key]}")
    fixed = grid.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ValueError("fixed must be a mapping of dotted param -> value")
    for key, value in fixed.items():
        if not isinstance(key, str) or not KEY.fullmatch(key):
            raise ValueError(f"fixed.{key}: not a dotted param name like prune.layers")
        if key in axes:
            raise ValueError(f"fixed.{key} is also swept in params")
        _check_value(f"fixed.{key}", value)
    targets = grid.get("targets") or []
    if not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"targets={targets!r} must be a list of dvc.yaml stage names, e.g. [evaluate@eora, benchmark]")


def expand(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of `params` (first key slowest, last fastest) except the excluded, each with `fixed`."""
    _check(grid)
    axes = grid["params"]
    combos = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    kept = [c for c in combos if not any(all(_same(c[k], v) for k, v in e.items()) for e in grid.get("exclude") or [])]
    return [{**c, **(grid.get("fixed") or {})} for c in kept]


@functools.cache
def _parser() -> OverridesParser:
    return OverridesParser.create()


def _identical(a: Any, b: Any) -> bool:
    """Equal and of the same type, element by element for lists."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_identical, a, b))
    return type(a) is type(b) and a == b


def _parses_to(text: str, value: Any) -> bool:
    """Whether DVC (Hydra's override grammar) reads `k=<text>` as exactly `value`, not a sweep."""
    try:
        override = _parser().parse_overrides([f"k={text}"])[0]
    except OverrideParseException:
        return False
    return not override.is_sweep_override() and _identical(override.value(), value)


def render(value: Any) -> str:
    """`value` as the right-hand side of `dvc exp run -S key=<value>`: `2:4` stays a string, `true`/`false`,
    `null`, numbers as written; strings DVC would read otherwise (`'4'`, `'a,b'`) are quoted."""
    if isinstance(value, list):
        text = "[" + ",".join(render(v) for v in value) + "]"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, (int, float)):
        text = repr(value)
    else:
        text = value if _parses_to(value, value) else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if not _parses_to(text, value):
        raise ValueError(f"{value!r} has no -S rendering that DVC reads back unchanged")
    return text


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "T" if value else "F"
    return "none" if value is None else str(value)


def name(assignment: dict[str, Any], varying: Iterable[str]) -> str:
    """A readable experiment name from the values of the `varying` params, e.g. `L2-w1_8-wikitext-b4-eoraT`;
    only letters, digits, `_` and `-` (a valid Git ref name, as DVC requires). Where `<section>.enabled` varies
    with other params of its section, `true` is implied and `false` reads `<section>off` in place of them all."""
    varying = list(varying)
    parts = []
    for key in varying:
        section = key.split(".")[0]
        switch = f"{section}.enabled"
        grouped = switch in varying and any(k != switch and k.split(".")[0] == section for k in varying)
        if grouped and assignment[switch] is False:
            part = f"{section}off" if key == switch else ""
        elif grouped and key == switch:
            part = ""
        else:
            part = LABELS.get(key, key.rsplit(".", 1)[-1]) + _text(assignment[key])
        parts += [re.sub(r"[^A-Za-z0-9_]+", "_", part)] if part else []
    return "-".join(parts)


def experiments(grid: dict[str, Any], fallback: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, assignment) of every combination, names from the swept params with more than one value;
    `fallback` names the one experiment of a grid that varies nothing."""
    _check(grid)
    varying = [k for k, v in grid["params"].items() if len(v) > 1]
    combos = expand(grid)
    names = [name(c, varying) or fallback for c in combos]
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice:
        raise ValueError(f"two combinations get the experiment name {twice!r}; exclude all but one "
                         "(a disabled section's other params do not count) or make their values differ in text")
    return list(zip(names, combos))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A params tree as dotted keys -> values, lists as JSON text."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return out
