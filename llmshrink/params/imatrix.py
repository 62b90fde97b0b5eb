"""The `imatrix` section: llama.cpp's importance matrix."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from llmshrink.params import integer


@dataclass(frozen=True)
class Imatrix:
    """llama.cpp's importance matrix from the calibration text."""

    SECTION: ClassVar[str] = "imatrix"
    samples: int
    seq_len: int

    def __post_init__(self) -> None:
        integer("imatrix.samples", self.samples, 1)
        integer("imatrix.seq_len", self.seq_len, 2)
