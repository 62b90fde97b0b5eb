"""`params.yaml` as one typed, validated schema per section; every error names the parameter and what is allowed.

A stage calls `load("<section>")` once, before any heavy work, and gets a frozen dataclass. Checks that need
the model (a layer count, a matrix width) live with the algorithm and also run before the heavy work.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Iterable

from ruamel.yaml import YAML

DTYPES = ("float32", "bfloat16", "float16")
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONVERTER_TYPES = ("f16", "bf16", "q8_0")  # GGUF file types llama.cpp's converter writes itself
GGUF_TYPES = (*CONVERTER_TYPES, "q6_k", "q5_k_m", "q5_k_s", "q5_1", "q5_0", "q4_k_m", "q4_k_s", "q4_1", "q4_0",
              "iq4_xs", "iq4_nl", "q3_k_l", "q3_k_m", "q3_k_s", "q2_k")  # and what llama-quantize makes
GPTQ_GGUF_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")  # llama.cpp's 32-weight block formats (gguf_gptq)
GPTQ_GGUF_METHODS = ("gptq", "rtn")  # gguf_gptq: GPTQ's error feedback, or llama-quantize's rounding alone
BLOCK_TYPES = ("q8_0", "q6_k", "q5_k", "q5_1", "q5_0", "q4_k", "q4_1", "q4_0", "iq4_nl", "q3_k", "q2_k")  # tensors


class InputError(RuntimeError):
    """An input that is not what it must be (a corrupt or truncated file, an unreachable or tampered download), with
    a message naming it: stages report it, like a ValueError of a parameter, as one line (stages/__init__.py)."""


def read(path: str | Path = "params.yaml") -> dict[str, Any]:
    """The whole params file as a dict, read as YAML 1.2 like DVC reads it: `dvc exp run -S
    wanda.pattern=2:4` writes `2:4` unquoted, which YAML 1.1 (PyYAML) would read as the base-60 integer 124."""
    with open(path) as f:
        return YAML(typ="safe", pure=True).load(f)


def choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """`value` if it is one of `allowed`, else a ValueError naming `name`."""
    allowed = list(allowed)
    if value not in allowed or (isinstance(value, bool) and not any(a is value for a in allowed)):
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {allowed}")
    return value


def in_range(name: str, value: Any, low: float, high: float, *, high_open: bool = False, low_open: bool = False) -> float:
    """`value` if it is a number within the bounds, else a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} must be a number")
    ok = (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not ok:
        raise ValueError(f"{name}={value!r} is out of range; allowed {'(' if low_open else '['}{low}, {high}"
                         f"{')' if high_open else ']'}")
    return value


def integer(name: str, value: Any, low: float = -math.inf, high: float = math.inf) -> int:
    """`value` if it is an integer (not a bool) in [low, high], else a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r} must be an integer")
    return int(in_range(name, value, low, high))


def cap(name: str, value: Any) -> int | None:
    """A cap on items: null (no cap) or an integer >= 1."""
    return None if value is None else integer(name, value, 1)


def flag(name: str, value: Any) -> bool:
    return choice(name, value, (True, False))


def names(name: str, value: Any, allowed: Iterable[str]) -> tuple[str, ...]:
    """A non-empty list of names out of `allowed`, as a tuple in the given order."""
    allowed = list(allowed)
    if isinstance(value, str) or not isinstance(value, list) or not value:
        raise ValueError(f"{name}={value!r} must be a non-empty list out of {allowed}")
    return tuple(choice(name, v, allowed) for v in value)


def _build(cls: type, section: str, raw: Any) -> Any:
    """`cls(**raw)` after checking that `raw` is a mapping with exactly the fields of `cls`."""
    if not isinstance(raw, dict):
        raise ValueError(f"{section}={raw!r} must be a mapping")
    known = [f.name for f in fields(cls) if f.init]
    unknown = sorted(map(str, set(raw) - set(known)))
    if unknown:
        raise ValueError(f"{section}.{unknown[0]} is not a parameter; {section} has {known}")
    missing = [k for k in known if k not in raw]
    if missing:
        raise ValueError(f"{section}.{missing[0]} is missing from params.yaml")
    return cls(**raw)


@dataclass(frozen=True)
class Model:
    """Where the base checkpoint comes from, and the dtype it is saved in."""

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


@dataclass(frozen=True)
class Data:
    """The text sets: calibration, fine-tuning, held-out perplexity text and QA."""

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


@dataclass(frozen=True)
class Prune:
    """Depth pruning: layer importance criterion, calibration size, layers removed and protected."""

    criterion: str
    samples: int
    seq_len: int
    layers: int
    protect_first: int
    protect_last: int

    def __post_init__(self) -> None:
        choice("prune.criterion", self.criterion, ("ppl", "taylor", "magnitude", "block_influence"))
        integer("prune.samples", self.samples, 1)
        integer("prune.seq_len", self.seq_len, 2)
        integer("prune.layers", self.layers, 0)
        integer("prune.protect_first", self.protect_first, 0)
        integer("prune.protect_last", self.protect_last, 0)


@dataclass(frozen=True)
class Wanda:
    """WANDA width pruning. `pattern`: "N:M" zeroes N of every M consecutive inputs of a row (thesis notation:
    "1:8" prunes 1 of 8); "unstructured:S" zeroes the share S of each row."""

    enabled: bool
    pattern: str
    modules: tuple[str, ...]
    dense_layers: tuple[int, ...]
    samples: int
    seq_len: int
    n: int = field(init=False, default=0)
    m: int = field(init=False, default=0)
    sparsity: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        flag("wanda.enabled", self.enabled)
        text = self.pattern if isinstance(self.pattern, str) else ""
        nm = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
        share = re.fullmatch(r"\s*unstructured\s*:\s*(\d+(?:\.\d*)?|\.\d+)\s*", text)
        if nm:
            n, m = int(nm[1]), int(nm[2])
            if not 0 < n < m:
                raise ValueError(f"wanda.pattern={self.pattern!r}: N:M needs 0 < N < M (N of every M inputs are "
                                 "zeroed; to prune nothing set wanda.enabled=false)")
            object.__setattr__(self, "n", n)
            object.__setattr__(self, "m", m)
        elif share:
            sparsity = in_range("wanda.pattern's share", float(share[1]), 0, 1, low_open=True, high_open=True)
            object.__setattr__(self, "sparsity", sparsity)
        else:
            raise ValueError(f"wanda.pattern={self.pattern!r} is neither 'N:M' (e.g. 1:8, 2:4) nor "
                             "'unstructured:S' with a share S in (0, 1), e.g. unstructured:0.5")
        object.__setattr__(self, "modules", names("wanda.modules", list(self.modules), MODULES))
        if not isinstance(self.dense_layers, (list, tuple)):
            raise ValueError(f"wanda.dense_layers={self.dense_layers!r} must be a list of layer indices")
        dense = sorted({integer("wanda.dense_layers", i, 0) for i in self.dense_layers})
        object.__setattr__(self, "dense_layers", tuple(dense))
        integer("wanda.samples", self.samples, 1)
        integer("wanda.seq_len", self.seq_len, 2)

    @property
    def target(self) -> float:
        """The share of each row's weights that is zeroed."""
        return self.n / self.m if self.m else self.sparsity

    @property
    def name(self) -> str:
        return f"{self.n}:{self.m}" if self.m else f"unstructured:{self.sparsity:g}"


@dataclass(frozen=True)
class Structured:
    """Structured width pruning: the shares of MLP channels, of KV groups (each with its query heads) and of the
    query heads of each kept group removed, the same number in every layer (0 = none; all 0 = off)."""

    mlp: float
    kv_groups: float
    query_heads: float
    importance: str
    samples: int
    seq_len: int

    def __post_init__(self) -> None:
        for key in ("mlp", "kv_groups", "query_heads"):
            in_range(f"structured.{key}", getattr(self, key), 0, 1, high_open=True)
        choice("structured.importance", self.importance, ("wanda", "activation"))
        integer("structured.samples", self.samples, 1)
        integer("structured.seq_len", self.seq_len, 2)

    @property
    def enabled(self) -> bool:
        return any((self.mlp, self.kv_groups, self.query_heads))


@dataclass(frozen=True)
class Lora:
    """Healing: a LoRA adapter merged into the weights, or full fine-tuning (`method`); the loss mixes the LM loss
    with distillation from the unpruned model (`distill` its weight, `temperature` T)."""

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


@dataclass(frozen=True)
class Gptq:
    """GPTQ with GPTQModel."""

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

    enabled: bool
    rank: int
    samples: int
    seq_len: int

    def __post_init__(self) -> None:
        flag("eora.enabled", self.enabled)
        integer("eora.rank", self.rank, 1)
        integer("eora.samples", self.samples, 1)
        integer("eora.seq_len", self.seq_len, 2)


@dataclass(frozen=True)
class Eval:
    """Evaluation of one checkpoint."""

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


@dataclass(frozen=True)
class Benchmark:
    """Speed of every checkpoint, side by side in one process."""

    dtype: str
    rounds: int
    prompt_tokens: int
    new_tokens: int
    batch_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        choice("benchmark.dtype", self.dtype, ("auto", *DTYPES))
        integer("benchmark.rounds", self.rounds, 1)
        integer("benchmark.prompt_tokens", self.prompt_tokens, 16)
        integer("benchmark.new_tokens", self.new_tokens, 1)
        if not isinstance(self.batch_sizes, (list, tuple)) or not self.batch_sizes:
            raise ValueError(f"benchmark.batch_sizes={self.batch_sizes!r} must be a non-empty list of integers >= 1")
        sizes = tuple(integer("benchmark.batch_sizes", b, 1) for b in self.batch_sizes)
        object.__setattr__(self, "batch_sizes", sizes)


@dataclass(frozen=True)
class Explore:
    """Run-time layer skip / repeat on the base model; `configs` are checked against the model's layer count."""

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


@dataclass(frozen=True)
class Kv:
    """Run-time KV-cache compression on the final dense checkpoint; `configs` are checked by llmshrink.kv_cache,
    against the model too, before any work."""

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
class Imatrix:
    """llama.cpp's importance matrix from the calibration text."""

    samples: int
    seq_len: int

    def __post_init__(self) -> None:
        integer("imatrix.samples", self.samples, 1)
        integer("imatrix.seq_len", self.seq_len, 2)


@dataclass(frozen=True)
class GptqGguf:
    """GPTQ on a llama.cpp block grid, packed into a llama.cpp file."""

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


@dataclass(frozen=True)
class Search:
    """Recipe search under byte budgets (`llmshrink/search.py`): budgets × largest formats of `gptq_gguf`."""

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


SECTIONS = {"model": Model, "data": Data, "prune": Prune, "wanda": Wanda, "structured": Structured, "lora": Lora,
            "gptq": Gptq, "eora": Eora, "eval": Eval, "benchmark": Benchmark, "explore": Explore,
            "export": Export, "imatrix": Imatrix, "kquant_base": KquantBase, "gptq_gguf": GptqGguf,
            "search": Search, "kv": Kv}


def load(section: str, path: str | Path = "params.yaml") -> Any:
    """One validated section of the params file (`seed` gives the pipeline's one seed, an integer >= 0)."""
    raw = read(path)
    if section not in raw:
        raise ValueError(f"params.yaml has no section {section!r}")
    if section == "seed":
        return integer("seed", raw["seed"], 0)
    return _build(SECTIONS[section], section, raw[section])
