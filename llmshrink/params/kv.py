"""The `kv` section: run-time KV-cache compression."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from llmshrink.params import cap, choice, integer


@dataclass(frozen=True)
class Kv:
    """Run-time KV-cache compression on the final dense checkpoint; `configs` are checked by llmshrink.kv_cache,
    against the model too, before any work."""

    SECTION: ClassVar[str] = "kv"
    contexts: tuple[int, ...]
    windows: int
    chunk: int
    decode_tokens: int
    context: int | None
    baseline: str
    deploy: str
    configs: dict

    def __post_init__(self) -> None:
        if not isinstance(self.contexts, (list, tuple)) or not self.contexts:
            raise ValueError(f"kv.contexts={self.contexts!r} must be a non-empty list of context lengths (tokens)")
        object.__setattr__(self, "contexts", tuple(sorted({integer("kv.contexts", c, 2) for c in self.contexts})))
        integer("kv.windows", self.windows, 1)
        integer("kv.chunk", self.chunk, 1)
        integer("kv.decode_tokens", self.decode_tokens, 1)
        cap("kv.context", self.context)
        if not isinstance(self.configs, dict) or not self.configs:
            raise ValueError(f"kv.configs={self.configs!r} must be a non-empty mapping of named cache configurations")
        choice("kv.baseline", self.baseline, list(self.configs))
        choice("kv.deploy", self.deploy, list(self.configs))
