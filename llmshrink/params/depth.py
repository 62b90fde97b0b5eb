"""The `prune` section: depth pruning."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from llmshrink.params import choice, integer


@dataclass(frozen=True)
class Prune:
    """Depth pruning: layer importance criterion, calibration size, layers removed and protected."""

    SECTION: ClassVar[str] = "prune"
    criterion: str
    samples: int
    seq_len: int
    layers: int
    protect_first: int
    protect_last: int

    def __post_init__(self) -> None:
        choice("prune.criterion", self.criterion, ("ppl", "taylor", "magnitude", "block_influence"))
        integer("prune.samples", self.samples, 1)
        integer("prune.seq_len", self.seq_len, 2)
        integer("prune.layers", self.layers, 0)
        integer("prune.protect_first", self.protect_first, 0)
        integer("prune.protect_last", self.protect_last, 0)
