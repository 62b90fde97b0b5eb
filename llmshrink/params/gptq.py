"""The `gptq` and `eora` sections: GPTQModel's quantization and its low-rank error compensation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from llmshrink.params import choice, flag, in_range, integer


@dataclass(frozen=True)
class Gptq:
    """GPTQ with GPTQModel."""

    SECTION: ClassVar[str] = "gptq"
    enabled: bool
    bits: int
    group_size: int
    desc_act: bool
    damp_percent: float
    sym: bool
    keep_sparsity: bool
    samples: int
    seq_len: int

    def __post_init__(self) -> None:
        flag("gptq.enabled", self.enabled)
        flag("gptq.keep_sparsity", self.keep_sparsity)
        choice("gptq.bits", self.bits, (2, 3, 4, 8))
        choice("gptq.group_size", self.group_size, (16, 32, 64, 128, 256, 512, 1024))
        flag("gptq.desc_act", self.desc_act)
        flag("gptq.sym", self.sym)
        in_range("gptq.damp_percent", self.damp_percent, 0, 1, low_open=True, high_open=True)
        integer("gptq.samples", self.samples, 1)
        integer("gptq.seq_len", self.seq_len, 2)


@dataclass(frozen=True)
class Eora:
    """EoRA low-rank compensation of the GPTQ error."""

    SECTION: ClassVar[str] = "eora"
    enabled: bool
    rank: int
    samples: int
    seq_len: int

    def __post_init__(self) -> None:
        flag("eora.enabled", self.enabled)
        integer("eora.rank", self.rank, 1)
        integer("eora.samples", self.samples, 1)
        integer("eora.seq_len", self.seq_len, 2)
