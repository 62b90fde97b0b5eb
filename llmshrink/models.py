"""Checkpoints: loading, saving and inspecting every checkpoint the pipeline writes: dense, GPTQ (with its EoRA
adapter) or one GGUF file (export). Where the base comes from is llmshrink/sources.py; GGUF folders are read
through llmshrink/gguf_files.py.

gptqmodel is imported only by `load` for quantized checkpoints: its import takes seconds and prints a banner."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig, PreTrainedModel

from llmshrink import family, int4
from llmshrink.atomic import copy_dir
from llmshrink.canonical import canonicalize
from llmshrink.gguf_files import gguf_config, gguf_file, parsed_once
from llmshrink.hardware import DTYPES, device, device_map
from llmshrink.params import InputError


def dir_bytes(path: str | Path) -> int:
    """Size on disk of a folder: bytes of all its files."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def read_config(path: str | Path) -> dict[str, Any]:
    """A checkpoint folder's config.json (a GGUF folder's: the config transformers derives from the file), with
    an error naming the folder when it is not a checkpoint."""
    if gguf_file(path):
        return gguf_config(path).to_dict()
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint folder (no config.json)")
    return json.loads(file.read_text(encoding="utf-8"))


def check_positions(name: str, seq_len: int, path: str | Path) -> None:
    """Refuse the parameter `name`, a window of `seq_len` tokens, when it is longer than the positions of the
    checkpoint folder `path` (its config's max_position_embeddings)."""
    positions = read_config(path).get("max_position_embeddings")
    if positions and seq_len > positions:
        raise ValueError(f"{name}={seq_len} exceeds the {positions} positions of {path} (max_position_embeddings); "
                         f"allowed 2 to {positions}")


def saved_dtype(path: str | Path) -> str:
    """The dtype name a checkpoint folder's weights are stored in (its config's `dtype`, float32 if none)."""
    config = read_config(path)
    return str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")


def quant_method(path: str | Path) -> str | None:
    """The quantization method a checkpoint folder's config declares ("gptq", "gguf", ...), or None."""
    return (read_config(path).get("quantization_config") or {}).get("quant_method")


def is_quantized(path: str | Path) -> bool:
    """Whether a checkpoint folder holds a GPTQ-quantized model."""
    return quant_method(path) == "gptq"


ADAPTER_DIR = "adapter"  # a GPTQ checkpoint's EoRA adapter, inside the checkpoint folder


def load(path: str | Path, dtype: str = "float32", on: torch.device | None = None) -> PreTrainedModel:
    """Any pipeline checkpoint as a causal LM in eval mode on `on` (default `hardware.device()`): dense ones with
    transformers in `dtype` (spread over several GPUs with accelerate when one cannot hold it); GPTQ ones with
    GPTQModel, with the EoRA adapter of `path/adapter` when there is one (`dtype` "auto" leaves GPTQModel's
    choice); a GGUF folder with transformers, dequantized to `dtype`."""
    on = on or device()
    read_config(path)
    try:
        if is_quantized(path):
            return _load_quantized(Path(path), dtype, on)
        if name := gguf_file(path):  # every tensor dequantized into a plain model in `dtype`
            with parsed_once():
                model = AutoModelForCausalLM.from_pretrained(path, gguf_file=name, config=gguf_config(path),
                                                             dtype=DTYPES[dtype],
                                                             quantization_config=GgufConfig(dequantize=True))
            return model.to(on).eval()
        weights = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
        weights = weights * DTYPES[dtype].itemsize // DTYPES.get(saved_dtype(path), torch.float32).itemsize
        # larger than one GPU: over all visible GPUs; else on a GPU straight onto it, no copy through host memory
        placement = device_map(weights, on) or ({"": on} if on.type == "cuda" else None)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], device_map=placement)
        return (model if placement else model.to(on)).eval()
    except (OSError, RuntimeError, ValueError, SafetensorError) as err:
        raise InputError(f"could not load the checkpoint {path} (incomplete or corrupt? rerun the stage "
                         f"that writes it, e.g. `dvc repro -f <stage>`): {err}") from err


def quantized_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """GPTQ linear layers of a loaded model: they keep packed buffers (GPTQModel's `qweight`, or tinygemm's
    `int4.Int4Linear`) instead of a `weight` parameter."""
    return [m for m in model.modules() if isinstance(m, int4.Int4Linear) or int4.is_gptq_layer(m)]


def load_tokenizer(path: str | Path) -> Any:
    """A checkpoint folder's tokenizer (a GGUF folder's from its file, with the file's padding token: transformers
    5.17 dropped it where 5.24 keeps it, and batched generation pads; transformers maps the file's
    `tokenizer.ggml.padding_token_id` into the config's `pad_token_id`, read once per process)."""
    if not (name := gguf_file(path)):
        return AutoTokenizer.from_pretrained(path)
    with parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=name)
    if tokenizer.pad_token is None and (pad := gguf_config(path).pad_token_id) is not None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    return tokenizer


GPU_KERNELS = ("gptq_triton", "gptq_torch")  # work offline; GPTQModel's automatic choice may download CUTLASS
TINYGEMM = "tinygemm"  # on a GPU, 4-bit checkpoints run on torch's int4 kernel (llmshrink.int4), read via gptq_torch


def _load_quantized(path: Path, dtype: str, on: torch.device) -> PreTrainedModel:
    """A GPTQ checkpoint through GPTQModel, with the EoRA adapter of `path/adapter` where there is one; the kernel
    is recorded as the model's `gptq_kernel` attribute. On a GPU, 4-bit checkpoints with contiguous groups of a
    size tinygemm takes move onto tinygemm (`int4.convert`), the kernel that decodes faster than bf16; others
    load with the first kernel of `GPU_KERNELS` that loads. On a CPU GPTQModel's own choice, in bfloat16 where
    it has no float32 kernel for the checkpoint's bits."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # GPTQModel's CPU pool; its default fails on 2 cores
    from gptqmodel import BACKEND, GPTQModel
    from gptqmodel.adapter.adapter import Lora

    adapter = None
    if (path / ADAPTER_DIR).is_dir():
        rank = json.loads((path / ADAPTER_DIR / "adapter_config.json").read_text())["r"]
        adapter = Lora(rank=rank, path=str((path / ADAPTER_DIR).resolve()))
    torch_dtype = "auto" if dtype == "auto" else DTYPES[dtype]
    attempts = [(kernel, torch_dtype) for kernel in (GPU_KERNELS if on.type == "cuda" else ("auto",))]
    if on.type == "cuda" and dtype in ("auto", "bfloat16") and _tinygemm_config(path):
        attempts.insert(0, (TINYGEMM, torch.bfloat16))
    if on.type != "cuda" and torch_dtype == torch.float32:
        attempts.append(("auto", torch.bfloat16))  # GPTQModel's CPU kernel for 8 bits computes in 16-bit only
    errors = []
    for kernel, torch_dtype in attempts:
        try:
            model = GPTQModel.load(str(path), adapter=adapter, device=on.type, dtype=torch_dtype,
                                   backend=BACKEND("gptq_torch" if kernel == TINYGEMM else kernel)).model.eval()
            if kernel == TINYGEMM:
                int4.convert(model)
                from accelerate.hooks import remove_hook_from_module

                remove_hook_from_module(model, recurse=True)  # GPTQModel's device hooks: one GPU, and they stop compile
        except Exception as err:  # noqa: BLE001 - a kernel that cannot load here: try the next one
            errors.append(f"{kernel}: {err}")
            continue
        model.gptq_kernel = kernel
        return model
    raise RuntimeError(f"no GPTQ kernel could load {path}: " + "; ".join(errors))


def _tinygemm_config(path: Path) -> bool:
    """Whether a GPTQ checkpoint's quantization config is one tinygemm runs (its shapes are checked on loading)."""
    q = read_config(path).get("quantization_config", {})
    return q.get("bits") == int4.BITS and q.get("group_size") in int4.GROUP_SIZES and not q.get("desc_act")


def save(model: PreTrainedModel, tokenizer: Any, out_dir: str | Path, dtype: str) -> None:
    """Save weights (safetensors, in `dtype`), config, generation config and tokenizer, with canonical metadata."""
    model.to(DTYPES[dtype]).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    canonicalize(out_dir)


def linear_shapes(path: str | Path) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every linear layer of the decoder, read from the config alone
    (the model is built on the meta device, no weights are loaded)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return {
        f"layers.{i}.{name}": (m.in_features, m.out_features)
        for i, layer in enumerate(family.layers(model))
        for name, m in layer.named_modules()
        if isinstance(m, torch.nn.Linear)
    }


def passthrough(src: str | Path, out: str | Path) -> dict[str, Any]:
    """A disabled step: `out` is a copy of `src`; the metrics every disabled step writes."""
    copy_dir(src, out)
    return {"enabled": False, "copied_from": str(src), "bytes": dir_bytes(out)}
