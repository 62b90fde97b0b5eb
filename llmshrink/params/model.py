"""The `model` section: where the base checkpoint comes from."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from llmshrink.params import DTYPES, choice, integer


@dataclass(frozen=True)
class Model:
    """Where the base checkpoint comes from, and the dtype it is saved in."""

    SECTION: ClassVar[str] = "model"
    source: str
    hub_id: str
    hub_revision: str
    local_path: str
    dtype: str
    tiny: dict
    shape: str
    tokenizer: str

    def __post_init__(self) -> None:
        choice("model.source", self.source, ("embedded", "gemma3-270m", "hub", "local", "tiny", "random"))
        choice("model.shape", self.shape, ("llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b"))
        if not isinstance(self.hub_revision, str) or not re.fullmatch(r"[\w./-]+", self.hub_revision):
            raise ValueError(f"model.hub_revision={self.hub_revision!r} must be a branch, tag or commit of "
                             "model.hub_id, e.g. main or a 40-hex commit (pinned)")
        if not isinstance(self.tokenizer, str):
            raise ValueError(f"model.tokenizer={self.tokenizer!r} must be a folder path, or empty for the embedded tokenizer")
        choice("model.dtype", self.dtype, DTYPES)
        if not isinstance(self.tiny, dict):
            raise ValueError(f"model.tiny={self.tiny!r} must be a mapping of LlamaConfig sizes")
        for k, v in self.tiny.items():
            integer(f"model.tiny.{k}", v, 1)
