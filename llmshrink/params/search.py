"""The `search` section: the recipe search under byte budgets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from llmshrink.params import in_range, integer, names
from llmshrink.params.gguf import GPTQ_GGUF_TYPES


@dataclass(frozen=True)
class Search:
    """Recipe search under byte budgets (`llmshrink/search.py`): budgets × largest formats of `gptq_gguf`."""

    SECTION: ClassVar[str] = "search"
    budgets: tuple[float, ...]
    types: tuple[str, ...]
    screen_windows: int
    full: int

    def __post_init__(self) -> None:
        if not isinstance(self.budgets, (list, tuple)) or not self.budgets:
            raise ValueError(f"search.budgets={self.budgets!r} must be a non-empty list of shares in (0, 1]")
        object.__setattr__(self, "budgets", tuple(in_range("search.budgets", b, 0, 1, low_open=True)
                                                  for b in self.budgets))
        object.__setattr__(self, "types", names("search.types", self.types, GPTQ_GGUF_TYPES))
        integer("search.screen_windows", self.screen_windows, 1)
        integer("search.full", self.full, 1)
