"""The `benchmark` section: speed of every checkpoint."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from llmshrink.params import DTYPES, choice, integer


@dataclass(frozen=True)
class Benchmark:
    """Speed of every checkpoint, side by side in one process."""

    SECTION: ClassVar[str] = "benchmark"
    dtype: str
    rounds: int
    prompt_tokens: int
    new_tokens: int
    batch_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        choice("benchmark.dtype", self.dtype, ("auto", *DTYPES))
        integer("benchmark.rounds", self.rounds, 1)
        integer("benchmark.prompt_tokens", self.prompt_tokens, 16)
        integer("benchmark.new_tokens", self.new_tokens, 1)
        if not isinstance(self.batch_sizes, (list, tuple)) or not self.batch_sizes:
            raise ValueError(f"benchmark.batch_sizes={self.batch_sizes!r} must be a non-empty list of integers >= 1")
        sizes = tuple(integer("benchmark.batch_sizes", b, 1) for b in self.batch_sizes)
        object.__setattr__(self, "batch_sizes", sizes)
