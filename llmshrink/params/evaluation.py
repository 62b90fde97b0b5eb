"""The `eval` section: evaluation of one checkpoint."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from llmshrink.params import DTYPES, cap, choice, flag, integer


@dataclass(frozen=True)
class Eval:
    """Evaluation of one checkpoint."""

    SECTION: ClassVar[str] = "eval"
    seq_len: int
    batch_size: int
    max_windows: int | None
    limit: int | None
    max_new_tokens: int
    chat_template: bool
    dtype: str
    lm_eval: bool | str
    choice_tasks: tuple[str, ...]
    kl_top_k: int

    def __post_init__(self) -> None:
        if not isinstance(self.choice_tasks, (list, tuple)) or not all(isinstance(t, str) for t in self.choice_tasks):
            raise ValueError(f"eval.choice_tasks={self.choice_tasks!r} must be a list of lm-eval task names, e.g. "
                             "[boolq, piqa, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa]")
        object.__setattr__(self, "choice_tasks", tuple(self.choice_tasks))
        for key, low in (("seq_len", 2), ("batch_size", 1), ("max_new_tokens", 1), ("kl_top_k", 1)):
            integer(f"eval.{key}", getattr(self, key), low)
        cap("eval.max_windows", self.max_windows)
        cap("eval.limit", self.limit)
        flag("eval.chat_template", self.chat_template)
        choice("eval.dtype", self.dtype, ("auto", *DTYPES))
        choice("eval.lm_eval", self.lm_eval, (False, True, "hub"))
