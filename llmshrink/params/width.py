"""The width-pruning sections: `wanda` (sparsity) and `structured` (smaller matrices)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from llmshrink.params import MODULES, choice, flag, in_range, integer, names


@dataclass(frozen=True)
class Wanda:
    """WANDA width pruning. `pattern`: "N:M" zeroes N of every M consecutive inputs of a row (thesis notation:
    "1:8" prunes 1 of 8); "unstructured:S" zeroes the share S of each row."""

    SECTION: ClassVar[str] = "wanda"
    enabled: bool
    pattern: str
    modules: tuple[str, ...]
    dense_layers: tuple[int, ...]
    samples: int
    seq_len: int
    n: int = field(init=False, default=0)
    m: int = field(init=False, default=0)
    sparsity: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        flag("wanda.enabled", self.enabled)
        text = self.pattern if isinstance(self.pattern, str) else ""
        nm = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
        share = re.fullmatch(r"\s*unstructured\s*:\s*(\d+(?:\.\d*)?|\.\d+)\s*", text)
        if nm:
            n, m = int(nm[1]), int(nm[2])
            if not 0 < n < m:
                raise ValueError(f"wanda.pattern={self.pattern!r}: N:M needs 0 < N < M (N of every M inputs are "
                                 "zeroed; to prune nothing set wanda.enabled=false)")
            object.__setattr__(self, "n", n)
            object.__setattr__(self, "m", m)
        elif share:
            sparsity = in_range("wanda.pattern's share", float(share[1]), 0, 1, low_open=True, high_open=True)
            object.__setattr__(self, "sparsity", sparsity)
        else:
            raise ValueError(f"wanda.pattern={self.pattern!r} is neither 'N:M' (e.g. 1:8, 2:4) nor "
                             "'unstructured:S' with a share S in (0, 1), e.g. unstructured:0.5")
        object.__setattr__(self, "modules", names("wanda.modules", list(self.modules), MODULES))
        if not isinstance(self.dense_layers, (list, tuple)):
            raise ValueError(f"wanda.dense_layers={self.dense_layers!r} must be a list of layer indices")
        dense = sorted({integer("wanda.dense_layers", i, 0) for i in self.dense_layers})
        object.__setattr__(self, "dense_layers", tuple(dense))
        integer("wanda.samples", self.samples, 1)
        integer("wanda.seq_len", self.seq_len, 2)

    @property
    def target(self) -> float:
        """The share of each row's weights that is zeroed."""
        return self.n / self.m if self.m else self.sparsity

    @property
    def name(self) -> str:
        return f"{self.n}:{self.m}" if self.m else f"unstructured:{self.sparsity:g}"


@dataclass(frozen=True)
class Structured:
    """Structured width pruning: the shares of MLP channels, of KV groups (each with its query heads) and of the
    query heads of each kept group removed, the same number in every layer (0 = none; all 0 = off)."""

    SECTION: ClassVar[str] = "structured"
    mlp: float
    kv_groups: float
    query_heads: float
    importance: str
    samples: int
    seq_len: int

    def __post_init__(self) -> None:
        for key in ("mlp", "kv_groups", "query_heads"):
            in_range(f"structured.{key}", getattr(self, key), 0, 1, high_open=True)
        choice("structured.importance", self.importance, ("wanda", "activation"))
        integer("structured.samples", self.samples, 1)
        integer("structured.seq_len", self.seq_len, 2)

    @property
    def enabled(self) -> bool:
        return any((self.mlp, self.kv_groups, self.query_heads))
