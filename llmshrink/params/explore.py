"""The `explore` section: run-time layer skip / repeat on the base model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from llmshrink.params import cap, integer


@dataclass(frozen=True)
class Explore:
    """Run-time layer skip / repeat on the base model; `configs` are checked against the model's layer count."""

    SECTION: ClassVar[str] = "explore"
    max_windows: int | None
    limit: int | None
    sample_prompt: str
    sample_tokens: int
    configs: dict

    def __post_init__(self) -> None:
        cap("explore.max_windows", self.max_windows)
        cap("explore.limit", self.limit)
        if not isinstance(self.sample_prompt, str) or not self.sample_prompt:
            raise ValueError(f"explore.sample_prompt={self.sample_prompt!r} must be a non-empty string")
        integer("explore.sample_tokens", self.sample_tokens, 1)
        if not isinstance(self.configs, dict) or not self.configs:
            raise ValueError(f"explore.configs={self.configs!r} must be a non-empty mapping of named configurations")
