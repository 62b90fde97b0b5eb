"""GGUF export for llama.cpp-family runtimes (llama.cpp, Ollama, LM Studio): a dense checkpoint converted to one
GGUF file, tokenizer and chat template inside, by llama.cpp's own `convert_hf_to_gguf.py` and the gguf-py it ships
with, both from one llama.cpp source: the copy vendored in the llama-cpp-python source distribution on PyPI
(fetched once and cached, no C++ build).

The converter writes F16, BF16 and Q8_0 itself (`--outtype`). The 4- and 5-bit block types, which llama.cpp makes
with its C++ `llama-quantize`, are made by the same converter with gguf-py's numpy quantizers (the reference
block formats), following llama-quantize's rule for the output matrix (`output.weight`, or the token embedding
when it is tied): Q6_K, or Q8_0 where rows do not divide into 256-wide K blocks; gguf-py cannot quantize Q6_K, so
here it is Q8_0 (what llama-quantize itself picks for SmolLM2's 576-wide rows). Norms and other 1-D tensors stay
F32 in every type, as in llama.cpp.

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
from llmshrink.params import GGUF_TYPES, choice

LLAMA_CPP = "llama-cpp-python==0.3.36"  # its source distribution vendors llama.cpp, converter and gguf-py
CONVERTER = ("conversion", "gguf-py")  # below vendor/llama.cpp: the converter's model classes and its gguf-py
GGUF_NAME = "model.gguf"
OUTPUT_TYPE = "Q8_0"  # the output matrix of a 4- or 5-bit file (llama-quantize's fallback from Q6_K)


def llama_cpp_dir() -> Path:
    """llama.cpp's converter and gguf-py, extracted once from the llama-cpp-python source distribution."""
    return pypi.sdist_dir(LLAMA_CPP, "vendor/llama.cpp", CONVERTER)


def to_gguf(src: str | Path, out_dir: str | Path, file_type: str) -> dict[str, Any]:
    """Convert the dense checkpoint folder `src` into `out_dir/model.gguf` of `file_type` (one of
    `params.GGUF_TYPES`: f16, bf16, q8_0 from the converter itself; q5_1, q5_0, q4_1, q4_0), atomically; returns
    its metrics (`describe`)."""
    choice("export.type", file_type, GGUF_TYPES)
    llama_cpp = llama_cpp_dir()
    with atomic_dir(out_dir) as tmp:
        cmd = [sys.executable, "-m", "llmshrink.export", str(llama_cpp), str(src), str(tmp / GGUF_NAME), file_type]
        if (code := subprocess.run(cmd).returncode) != 0:
            raise RuntimeError(f"llama.cpp's converter failed on {src} (exit {code}; its message is above)")
    return {"type": file_type, **describe(Path(out_dir) / GGUF_NAME)}


def describe(file: str | Path) -> dict[str, Any]:
    """Bytes, parameter count, tensor types (count of tensors per GGML type) and metadata of a GGUF file."""
    from llmshrink.models import gguf_reader  # not at the top: the converter's child process imports this module

    reader = gguf_reader(file)
    field = lambda key: reader.fields[key].contents() if key in reader.fields else None  # noqa: E731
    return {"bytes": Path(file).stat().st_size, "tensors": len(reader.tensors),
            "params": int(sum(t.n_elements for t in reader.tensors)),
            "tensor_types": dict(sorted(Counter(t.tensor_type.name for t in reader.tensors).items())),
            "layers": field(f"{field('general.architecture')}.block_count"),
            "chat_template": field("tokenizer.chat_template") is not None,
            "converter": f"llama.cpp convert_hf_to_gguf.py from the {LLAMA_CPP} sdist"}


def _convert(llama_cpp: Path, src: Path, out: Path, file_type: str) -> None:
    """In the child process: llama.cpp's converter class for `src`'s architecture writes `out`; for the 4- and
    5-bit types, a subclass picks each tensor's type like llama-quantize (the converter keeps 1-D tensors F32)."""
    sys.path[:0] = [str(llama_cpp / "gguf-py"), str(llama_cpp)]
    import gguf
    import torch
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    logging.basicConfig(level=logging.WARNING)
    hparams = ModelBase.load_hparams(src, False)
    model_class = get_model_class(get_model_architecture(hparams, ModelType.TEXT))
    ftype = gguf.LlamaFileType[f"MOSTLY_{file_type.upper()}"]
    if file_type.startswith(("q4", "q5")):
        block = gguf.GGMLQuantizationType[file_type.upper()]
        output = [gguf.MODEL_TENSOR.OUTPUT] + [gguf.MODEL_TENSOR.TOKEN_EMBD] * bool(hparams.get("tie_word_embeddings"))

        class BlockQuantized(model_class):  # type: ignore[misc, valid-type]
            model_arch = model_class.model_arch

            def tensor_force_quant(self, name, new_name, bid, n_dims):  # noqa: ANN001, ANN202
                if any(self.match_model_tensor_name(new_name, key, bid) for key in output):
                    return gguf.GGMLQuantizationType[OUTPUT_TYPE]
                return block

        model_class = BlockQuantized
    with torch.inference_mode():
        model_class(src, ftype, out, model_name=src.name).write()


if __name__ == "__main__":
    _convert(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
