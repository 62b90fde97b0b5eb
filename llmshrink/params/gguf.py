"""llama.cpp's file and tensor types, and the sections that write GGUF files: `export`, `kquant_base` and `gptq_gguf`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from llmshrink.params import choice, flag, in_range, integer


CONVERTER_TYPES = ("f16", "bf16", "q8_0")  # GGUF file types llama.cpp's converter writes itself
GGUF_TYPES = (*CONVERTER_TYPES, "q6_k", "q5_k_m", "q5_k_s", "q5_1", "q5_0", "q4_k_m", "q4_k_s", "q4_1", "q4_0",
              "iq4_xs", "iq4_nl", "q3_k_l", "q3_k_m", "q3_k_s", "q2_k")  # and what llama-quantize makes
GPTQ_GGUF_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")  # llama.cpp's 32-weight block formats (gguf_gptq)
GPTQ_GGUF_METHODS = ("gptq", "rtn")  # gguf_gptq: GPTQ's error feedback, or llama-quantize's rounding alone
BLOCK_TYPES = ("q8_0", "q6_k", "q5_k", "q5_1", "q5_0", "q4_k", "q4_1", "q4_0", "iq4_nl", "q3_k", "q2_k")  # tensors


def embedding_type(name: str, value: Any) -> str:
    """A tensor type for the token embedding / output matrix of a GGUF file, or `auto` (llama-quantize's pick)."""
    return choice(name, value, ("auto", "f16", *BLOCK_TYPES))


@dataclass(frozen=True)
class Export:
    """GGUF export of the final dense checkpoint for llama.cpp-family runtimes, in one llama.cpp file type."""

    SECTION: ClassVar[str] = "export"
    enabled: bool
    type: str
    imatrix: bool
    embedding_type: str

    def __post_init__(self) -> None:
        flag(f"{self.SECTION}.enabled", self.enabled)
        choice(f"{self.SECTION}.type", self.type, GGUF_TYPES)
        flag(f"{self.SECTION}.imatrix", self.imatrix)
        embedding_type(f"{self.SECTION}.embedding_type", self.embedding_type)


@dataclass(frozen=True)
class KquantBase(Export):
    """The baseline a user would make instead: the untouched base through llama.cpp's quantizer (same keys)."""

    SECTION: ClassVar[str] = "kquant_base"


@dataclass(frozen=True)
class GptqGguf:
    """GPTQ on a llama.cpp block grid, packed into a llama.cpp file."""

    SECTION: ClassVar[str] = "gptq_gguf"
    enabled: bool
    method: str
    type: str
    embedding_type: str
    embedding_gptq: bool
    samples: int
    seq_len: int
    damp_percent: float
    budget: float | None
    fisher_samples: int

    def __post_init__(self) -> None:
        flag("gptq_gguf.enabled", self.enabled)
        choice("gptq_gguf.method", self.method, GPTQ_GGUF_METHODS)
        choice("gptq_gguf.type", self.type, GPTQ_GGUF_TYPES)
        embedding_type("gptq_gguf.embedding_type", self.embedding_type)
        if flag("gptq_gguf.embedding_gptq", self.embedding_gptq) and self.method != "gptq":
            raise ValueError("gptq_gguf.embedding_gptq=true needs gptq_gguf.method=gptq")
        if self.budget is not None:
            in_range("gptq_gguf.budget", self.budget, 0, 1, low_open=True)
            choice("gptq_gguf.embedding_type (with a budget, which picks it)", self.embedding_type, ("auto",))
        elif self.embedding_gptq:
            choice("gptq_gguf.embedding_type (with embedding_gptq)", self.embedding_type, GPTQ_GGUF_TYPES)
        integer("gptq_gguf.fisher_samples", self.fisher_samples, 1)
        integer("gptq_gguf.samples", self.samples, 1)
        integer("gptq_gguf.seq_len", self.seq_len, 2)
        in_range("gptq_gguf.damp_percent", self.damp_percent, 0, 1, low_open=True, high_open=True)
