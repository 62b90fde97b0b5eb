"""GGUF checkpoint folders (the export stage's and the GGUF baselines': one `.gguf` file in place of config.json,
tokenizer and weights) as transformers reads them, with each file parsed once per process and version."""
from __future__ import annotations

import copy
import functools
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from llmshrink import family
from llmshrink.params import InputError


def gguf_file(path: str | Path) -> str | None:
    """The name of the one GGUF file a checkpoint folder holds in place of config.json, tokenizer and weights
    (the export stage's), or None."""
    files = [f.name for f in Path(path).glob("*.gguf")]
    return files[0] if len(files) == 1 and not (Path(path) / "config.json").is_file() else None


def _version(file: str | Path) -> tuple[Path, tuple[int, int, int]]:
    """A file's resolved path and (inode, mtime, size): a cache key that changes when the file is rewritten."""
    file = Path(file).resolve()
    stat = file.stat()
    return file, (stat.st_ino, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _gguf_reader(file: Path, version: tuple[int, int, int]) -> Any:
    from gguf.gguf_reader import GGUFReader  # the reader transformers uses (the class, not `parsed_once`'s)

    return GGUFReader(file)


def gguf_reader(file: str | Path) -> Any:
    """A GGUF file parsed by gguf's `GGUFReader` (read-only, memory-mapped), once per process and version of the
    file: the reader parses every field in Python, the tokenizer's vocabulary too (3 s for SmolLM2's on a 2-core
    CPU; Llama 3's has 2.6 times as many tokens)."""
    return _gguf_reader(*_version(file))


@contextmanager
def parsed_once() -> Iterator[None]:
    """Within the block, transformers' GGUF loading (config, tokenizer, weights) takes each file's reader from
    `gguf_reader` and builds gguf's tensor-name map once per architecture and depth. Otherwise it parses the whole
    file for each of the three, and rebuilds the name map (every tensor name of every layer) for each of a
    model's submodules: 371 times for SmolLM2."""
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = lambda path, mode="r": gguf_reader(path) if mode == "r" else reader(path, mode)
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=4)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


@functools.lru_cache(maxsize=4)
def _gguf_config(file: Path, version: tuple[int, int, int]) -> PretrainedConfig:
    with parsed_once():
        config = AutoConfig.from_pretrained(file.parent, gguf_file=file.name)
    # transformers maps no head width for some architectures (Qwen3: the config class's default 128 stays)
    fields = gguf_reader(file).fields
    key = f"{fields['general.architecture'].contents()}.attention.key_length"
    if key in fields and getattr(config, "head_dim", None) not in (None, fields[key].contents()):
        config.head_dim = fields[key].contents()
    return config


def check_gguf_readable(file: Path) -> None:
    """Refuse a GGUF file whose architecture transformers' GGUF loader cannot read back (OLMo 2, Granite)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        arch = gguf_reader(file).fields["general.architecture"].contents()
    except (OSError, ValueError, KeyError, IndexError, struct.error):
        return  # unreadable: gguf_config's error names the file
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise family.Unsupported(arch, "GGUF read-back (evaluate, benchmark, explore)",
                                 f"transformers' GGUF loader cannot read the architecture {arch!r} of {file}; "
                                 "evaluate the dense checkpoint it was exported from instead")


def gguf_config(path: str | Path) -> PretrainedConfig:
    """The config transformers derives from a GGUF checkpoint folder's file, once per process and version of the
    file (a copy: transformers may change the one it is given)."""
    file = Path(path) / gguf_file(path)
    check_gguf_readable(file)
    try:
        return copy.deepcopy(_gguf_config(*_version(file)))
    except (OSError, ValueError, KeyError, IndexError, struct.error) as err:
        raise InputError(f"{file} is not a readable GGUF file (truncated or corrupt? rerun the stage that writes "
                         f"it, e.g. `dvc repro -f export`): {type(err).__name__}: {err}") from err
