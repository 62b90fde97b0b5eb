"""The `data` section: the text sets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from llmshrink.params import choice, flag, in_range, integer


@dataclass(frozen=True)
class Data:
    """The text sets: calibration, fine-tuning, held-out perplexity text and QA."""

    SECTION: ClassVar[str] = "data"
    source: str
    heldout_share: float
    calibration_share: float
    max_chars: int
    qa_eval: int
    qa_train: int
    choice_files: dict
    choice_items: int
    local: dict
    hub: dict

    def __post_init__(self) -> None:
        choice("data.source", self.source, ("embedded", "local", "hub"))
        in_range("data.heldout_share", self.heldout_share, 0, 1, low_open=True, high_open=True)
        in_range("data.calibration_share", self.calibration_share, 0, 1, low_open=True, high_open=True)
        integer("data.max_chars", self.max_chars, 1)
        integer("data.qa_eval", self.qa_eval, 1)
        integer("data.qa_train", self.qa_train, 0)
        if not isinstance(self.choice_files, dict):
            raise ValueError(f"data.choice_files={self.choice_files!r} must be a mapping of task name to a jsonl path")
        integer("data.choice_items", self.choice_items, 1)
        choice("data.hub.calibration", self.hub.get("calibration"), ("wikitext", "c4"))
        flag("data.hub.open_book", self.hub.get("open_book"))
        integer("data.hub.context_chars", self.hub.get("context_chars"), 1)
