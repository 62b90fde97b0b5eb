"""GGUF files for llama.cpp-family runtimes (llama.cpp, Ollama, LM Studio): a dense checkpoint as one GGUF file,
tokenizer and chat template inside, made with llama.cpp's own tools from one llama.cpp source, the copy vendored
in the llama-cpp-python source distribution on PyPI (`LLAMA_CPP`, fetched once and cached):

- F16, BF16 and Q8_0 by its converter `convert_hf_to_gguf.py` alone (no C++ build);
- every other type (`QUANTIZER_TYPES`: the K-quants, IQ4_NL/XS and the 32-block Q4/Q5 types) by converting to
  F16 and quantizing with its C++ `llama-quantize`, with an importance matrix when one is given (`llamacpp`).

The converter runs in a child process (`python -m llmshrink.export`), so that its gguf-py is never mixed with the
gguf package transformers reads GGUF files with.
"""
from __future__ import annotations

import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from llmshrink import pypi
from llmshrink.atomic import atomic_dir
from llmshrink.params import choice
from llmshrink.params.gguf import CONVERTER_TYPES, GGUF_TYPES

LLAMA_CPP = "llama-cpp-python==0.3.36"  # its source distribution vendors llama.cpp, converter and gguf-py
CONVERTER = ("conversion", "gguf-py")  # below vendor/llama.cpp: the converter's model classes and its gguf-py
GGUF_NAME = "model.gguf"
UNSUPPORTED = 3  # the converter child's exit code when it cannot convert the model's family (its reason on stderr)


def llama_cpp_dir() -> Path:
    """llama.cpp's converter and gguf-py, extracted once from the llama-cpp-python source distribution."""
    return pypi.sdist_dir(LLAMA_CPP, "vendor/llama.cpp", CONVERTER)


def to_gguf(src: str | Path, out_dir: str | Path, file_type: str, imatrix: str | Path | None = None,
            types: dict[str, str] | None = None, pure: bool = False) -> dict[str, Any]:
    """Convert the dense checkpoint folder `src` into `out_dir/model.gguf` of `file_type` (one of
    `GGUF_TYPES`), atomically; the types `llama-quantize` makes (and any type with per-tensor `types`)
    take the importance matrix file `imatrix`, `types` and `pure` (see `llamacpp.quantize`). Returns the file's
    metrics (`describe`)."""
    choice("export.type", file_type, GGUF_TYPES)
    check_family(src)
    by_converter = file_type in CONVERTER_TYPES and not types
    with atomic_dir(out_dir) as tmp:
        if by_converter:
            convert(src, tmp / GGUF_NAME, file_type)
        else:
            from llmshrink import llamacpp

            llamacpp.require("llama-quantize")
            convert(src, tmp / "f16.gguf", "f16")
            llamacpp.quantize(tmp / "f16.gguf", tmp / GGUF_NAME, file_type, imatrix, pure, types)
            (tmp / "f16.gguf").unlink()
    settings = {"imatrix": imatrix is not None, "type_overrides": types or {}, "pure": pure}
    return {"type": file_type, **(settings if not by_converter else {}),
            **describe(Path(out_dir) / GGUF_NAME)}


def check_family(src: str | Path) -> None:
    """Refuse, before converting, a model the GGUF file would compute differently: llama.cpp's converter writes a
    Mistral as a Llama, without its sliding window (Mistral 7B v0.1's 4096 tokens; later ones have none)."""
    from llmshrink import family, models  # not at the top: the converter's child process imports this module

    config = models.read_config(src)
    window, positions = config.get("sliding_window"), config.get("max_position_embeddings") or 0
    if config.get("model_type") == "mistral" and window and window < positions:
        raise family.Unsupported("mistral", "export", f"llama.cpp's converter writes a Mistral as a Llama, without "
                                 f"its sliding window of {window} tokens: beyond {window} tokens of context the GGUF "
                                 f"file would attend differently (sliding_window null converts)")


def convert(src: str | Path, out: Path, file_type: str) -> None:
    """llama.cpp's converter: the dense checkpoint folder `src` into the file `out` of a `CONVERTER_TYPES` type."""
    cmd = [sys.executable, "-m", "llmshrink.export", str(llama_cpp_dir()), str(src), str(out), file_type]
    done = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(done.stderr)
    if done.returncode == UNSUPPORTED:
        from llmshrink import family  # not at the top: the converter's child process imports this module

        raise family.Unsupported(family.of_path(src).model_type, "export", f"llama.cpp's converter in {LLAMA_CPP} "
                                 f"cannot convert {src}: {done.stderr.strip().splitlines()[-1]}")
    if done.returncode != 0:
        raise RuntimeError(f"llama.cpp's converter failed on {src} (exit {done.returncode}; its message is above)")


def describe(file: str | Path) -> dict[str, Any]:
    """Bytes, parameter count, tensor types (count of tensors per GGML type) and metadata of a GGUF file."""
    from llmshrink.gguf_files import gguf_reader  # not at the top: the converter's child process imports this module

    reader = gguf_reader(file)
    field = lambda key: reader.fields[key].contents() if key in reader.fields else None  # noqa: E731
    return {"bytes": Path(file).stat().st_size, "tensors": len(reader.tensors),
            "params": int(sum(t.n_elements for t in reader.tensors)),
            "tensor_types": dict(sorted(Counter(t.tensor_type.name for t in reader.tensors).items())),
            "layers": field(f"{field('general.architecture')}.block_count"),
            "chat_template": field("tokenizer.chat_template") is not None,
            "converter": f"llama.cpp convert_hf_to_gguf.py from the {LLAMA_CPP} sdist"}


def _convert(llama_cpp: Path, src: Path, out: Path, file_type: str) -> None:
    """In the child process: llama.cpp's converter class for `src`'s architecture writes `out`; an architecture it
    has no class for, or a vocabulary it cannot read (Gemma 2 and Phi-3 take only a SentencePiece tokenizer.model),
    exits with `UNSUPPORTED` and the converter's reason, before the file is opened."""
    sys.path[:0] = [str(llama_cpp / "gguf-py"), str(llama_cpp)]
    import gguf
    import torch
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    logging.basicConfig(level=logging.WARNING)
    try:
        model_class = get_model_class(get_model_architecture(ModelBase.load_hparams(src, False), ModelType.TEXT))
    except NotImplementedError as err:
        _refuse(err)
    model = model_class(src, gguf.LlamaFileType[f"MOSTLY_{file_type.upper()}"], out, model_name=src.name)
    set_vocab = model.set_vocab

    def checked_vocab() -> None:  # `write` reads the vocabulary before it opens the file
        try:
            set_vocab()
        except (NotImplementedError, ValueError, FileNotFoundError) as err:
            _refuse(err)

    model.set_vocab = checked_vocab
    with torch.inference_mode():
        model.write()


def _refuse(err: Exception) -> None:
    print(f"{type(err).__name__}: {err}", file=sys.stderr)
    sys.exit(UNSUPPORTED)


if __name__ == "__main__":
    _convert(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
