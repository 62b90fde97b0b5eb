"""The `lora` section: healing by LoRA or full fine-tuning, with optional distillation."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from llmshrink.params import MODULES, choice, flag, in_range, integer, names


@dataclass(frozen=True)
class Lora:
    """Healing: a LoRA adapter merged into the weights, or full fine-tuning (`method`); the loss mixes the LM loss
    with distillation from the unpruned model (`distill` its weight, `temperature` T)."""

    SECTION: ClassVar[str] = "lora"
    enabled: bool
    dataset: str
    targets: tuple[str, ...]
    rank: int
    alpha: float
    dropout: float
    lr: float
    steps: int
    batch_size: int
    grad_accum: int
    seq_len: int
    keep_sparsity: bool
    method: str
    distill: float
    temperature: float

    def __post_init__(self) -> None:
        flag("lora.enabled", self.enabled)
        flag("lora.keep_sparsity", self.keep_sparsity)
        choice("lora.method", self.method, ("lora", "full"))
        in_range("lora.distill", self.distill, 0, 1)
        in_range("lora.temperature", self.temperature, 0, math.inf, low_open=True)
        choice("lora.dataset", self.dataset, ("wikitext", "triviaqa"))
        object.__setattr__(self, "targets", names("lora.targets", list(self.targets), MODULES))
        for key, low in (("rank", 1), ("steps", 1), ("batch_size", 1), ("grad_accum", 1), ("seq_len", 2)):
            integer(f"lora.{key}", getattr(self, key), low)
        in_range("lora.dropout", self.dropout, 0, 1, high_open=True)
        in_range("lora.alpha", self.alpha, 0, math.inf, low_open=True)
        in_range("lora.lr", self.lr, 0, 1, low_open=True)
