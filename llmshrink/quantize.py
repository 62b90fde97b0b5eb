"""GPTQ weight quantization and EoRA low-rank error compensation with GPTQModel.

GPTQ (Frantar et al. 2023) quantizes each linear layer of the decoder to `bits` with one scale
(and zero point) per `group_size` consecutive inputs, compensating each column's rounding error on
the columns not yet quantized through the inverse Hessian H = 2 X X^T of calibration activations.
EoRA (Liu et al. 2024) approximates the remaining error W - W_q by a rank-r product B A chosen in the
eigenspace of the activation covariance, so that it minimises ||(W - W_q - B A) X|| rather than the
plain weight error; it is kept as a LoRA adapter next to the untouched quantized checkpoint.
gptqmodel is imported only by the functions that use it: its import takes seconds and prints a banner.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

# GPTQModel sizes its CPU worker pool from this variable; on 2 cores the default fails with
# "requests 2 workers but parent 'cpu' only has 1". It must be set before gptqmodel is imported.
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from llmshrink import models
from llmshrink.atomic import atomic_dir, copy_dir
from llmshrink.calib import token_windows
from llmshrink.evaluate import resolve_dtype
from llmshrink.params import choice

BITS = (2, 3, 4, 8)
GROUP_SIZES = (16, 32, 64, 128, 256, 512, 1024)  # GPTQModel's packing kernel (-1 clashes with its act_group_aware)
CPU_INT4_GROUP_SIZES = (32, 64, 128, 256)  # ATen's int4 CPU matmul, which runs 4-bit layers on CPU
QUANT_KEYS = ("bits", "group_size", "desc_act", "sym", "damp_percent")
CALIB_BATCH = 4  # calibration windows per forward pass (memory/speed only; all windows have one length)
ADAPTER_DIR = "adapter"


def device() -> str:
    """Where GPTQModel computes: the GPU when there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(on: str) -> torch.dtype:
    """What GPTQModel computes in: bfloat16 where `on` supports it natively, else float32 (GPTQModel's own
    default, bfloat16, is emulated and about twice as slow on CPUs without AMX/AVX512-BF16)."""
    return models.DTYPES[resolve_dtype("auto", torch.device(on))]


def dir_bytes(path: str | Path) -> int:
    """Size on disk of a folder: bytes of all its files."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def saved_dtype(path: str | Path) -> torch.dtype:
    """The dtype a checkpoint folder's weights are stored in (its config's `dtype`, float32 if none)."""
    name = str(getattr(AutoConfig.from_pretrained(path), "dtype", None) or "float32")
    return models.DTYPES[name.removeprefix("torch.")]


def quant_method(path: str | Path) -> str | None:
    """The quantization method a checkpoint folder's config declares ("gptq", "gguf", ...), or None."""
    config = json.loads((Path(path) / "config.json").read_text())
    return (config.get("quantization_config") or {}).get("quant_method")


def is_quantized(path: str | Path) -> bool:
    """Whether a checkpoint folder holds a GPTQ-quantized model."""
    return quant_method(path) == "gptq"


def linear_shapes(path: str | Path) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every linear layer of the decoder, i.e. of every layer GPTQ quantizes,
    read from the config alone (the model is built on the meta device, no weights are loaded)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return {
        f"layers.{i}.{name}": (m.in_features, m.out_features)
        for i, layer in enumerate(models.decoder_layers(model))
        for name, m in layer.named_modules()
        if isinstance(m, torch.nn.Linear)
    }


def check_gptq(p: dict[str, Any], src: str | Path, on: str) -> None:
    """Validate the gptq params section for the model in `src` before any work.

    On CPU GPTQModel runs 4-bit layers with ATen's int4 matmul, which needs the group size to divide every
    input width (2-, 3- and 8-bit layers run with a kernel that pads the last group, as do GPU kernels)."""
    if quant_method(src):
        raise ValueError(f"{src} declares a {quant_method(src)!r} quantization_config; GPTQ needs an unquantized checkpoint")
    choice("gptq.bits", p["bits"], BITS)
    choice("gptq.group_size", p["group_size"], GROUP_SIZES)
    choice("gptq.desc_act", p["desc_act"], (True, False))
    choice("gptq.sym", p["sym"], (True, False))
    if not 0 < p["damp_percent"] < 1:
        raise ValueError(f"gptq.damp_percent={p['damp_percent']!r} is out of range; allowed (0, 1)")
    if p["samples"] < 1 or p["seq_len"] < 2:
        raise ValueError(f"gptq.samples={p['samples']!r} must be >= 1 and gptq.seq_len={p['seq_len']!r} >= 2")
    if on == "cpu" and p["bits"] == 4:
        widths = sorted({w for w, _ in linear_shapes(src).values()})
        common = math.gcd(*widths)
        if common % p["group_size"] or p["group_size"] not in CPU_INT4_GROUP_SIZES:
            allowed = sorted((g for g in CPU_INT4_GROUP_SIZES if common % g == 0), reverse=True)
            raise ValueError(
                f"gptq.group_size={p['group_size']} does not suit the input widths {widths} of the quantized layers: "
                f"GPTQModel's 4-bit CPU kernel needs a group size in {list(CPU_INT4_GROUP_SIZES)} that divides them all; "
                f"choose one of {allowed} (or gptq.bits 2, 3 or 8)"
            )


def check_eora(p: dict[str, Any], src: str | Path) -> None:
    """Validate the eora params section: the rank must fit the smallest quantized layer."""
    smallest = min(min(shape) for shape in linear_shapes(src).values())
    if not 1 <= p["rank"] <= smallest:
        raise ValueError(f"eora.rank={p['rank']!r} is out of range; allowed [1, {smallest}] (smallest layer width)")
    if p["samples"] < 1 or p["seq_len"] < 2:
        raise ValueError(f"eora.samples={p['samples']!r} must be >= 1 and eora.seq_len={p['seq_len']!r} >= 2")


def calibration(src: str | Path, text: str, n_samples: int, seq_len: int, seed: int) -> list[dict[str, list[int]]]:
    """Random token windows of `text` in the format GPTQModel takes: a list of {input_ids, attention_mask}."""
    windows = token_windows(AutoTokenizer.from_pretrained(src), text, n_samples, seq_len, seed)
    return [{"input_ids": w.tolist(), "attention_mask": [1] * len(w)} for w in windows]


def gptq(src: str | Path, out: str | Path, p: dict[str, Any], text: str, seed: int, on: str | None = None) -> dict[str, Any]:
    """Quantize the checkpoint `src` with GPTQ into `out` (a copy of `src` when gptq.enabled is false).

    `p` is the gptq params section, `text` the calibration text. Returns the metrics."""
    on = on or device()
    check_gptq(p, src, on)
    if not p["enabled"]:
        copy_dir(src, out)
        return {"quantized": False, "bytes": dir_bytes(out), "source_bytes": dir_bytes(src)}
    calib = calibration(src, text, p["samples"], p["seq_len"], seed)
    from gptqmodel import GPTQModel, QuantizeConfig

    start = time.perf_counter()
    with atomic_dir(out) as tmp:
        dtype, keep = compute_dtype(on), saved_dtype(src)
        # computing in another dtype than `src` is stored in: keep the model in memory to cast it back before saving
        config = QuantizeConfig(**{k: p[k] for k in QUANT_KEYS}, offload_to_disk=dtype == keep)
        model = GPTQModel.load(str(src), config, device=on, dtype=dtype)
        model.quantize(calib, batch_size=CALIB_BATCH)
        if dtype != keep:  # the unquantized tensors (embeddings, norms) as stored in `src`; scales stay float16
            for t in (*model.model.parameters(), *model.model.buffers()):
                if t.dtype == dtype:
                    t.data = t.data.to(keep)
        model.save(str(tmp))
    seconds = time.perf_counter() - start
    settings = {k: p[k] for k in (*QUANT_KEYS, "samples", "seq_len")}
    return {"quantized": True, **settings, "device": on, "seconds": round(seconds, 1),
            "bytes": dir_bytes(out), "source_bytes": dir_bytes(src)}


def eora(reference: str | Path, quantized: str | Path, out: str | Path, p: dict[str, Any], text: str, seed: int,
         on: str | None = None) -> dict[str, Any]:
    """Copy the quantized checkpoint into `out` and add an EoRA adapter in `out/adapter` that compensates its
    error against the unquantized `reference`. Without one when eora.enabled is false or `quantized` is not
    quantized. `p` is the eora params section, `text` the calibration text. Returns the metrics."""
    on = on or device()
    if not (p["enabled"] and is_quantized(quantized)):
        copy_dir(quantized, out)
        reason = "eora.enabled is false" if not p["enabled"] else f"{quantized} is not quantized"
        return {"adapter": False, "reason": reason, "bytes": dir_bytes(out)}
    check_eora(p, reference)
    calib = calibration(reference, text, p["samples"], p["seq_len"], seed)
    from gptqmodel import GPTQModel
    from gptqmodel.adapter.adapter import Lora

    start = time.perf_counter()
    with atomic_dir(out) as tmp:
        shutil.copytree(quantized, tmp, dirs_exist_ok=True)
        # GPTQModel torch.compiles the dequantization it calls once per layer here: eager is faster.
        with torch._dynamo.config.patch(disable=True):
            GPTQModel.adapter.generate(
                adapter=Lora(rank=p["rank"], path=str(tmp / ADAPTER_DIR)),
                model_id_or_path=str(reference),
                quantized_model_id_or_path=str(quantized),
                calibration_dataset=calib,
                batch_size=CALIB_BATCH,
                device=on,
            )
    seconds = time.perf_counter() - start
    return {"adapter": True, "rank": p["rank"], "samples": p["samples"], "seq_len": p["seq_len"], "device": on,
            "seconds": round(seconds, 1), "adapter_bytes": dir_bytes(Path(out) / ADAPTER_DIR), "bytes": dir_bytes(out)}


def load_quantized(path: str | Path, dtype: str = "auto") -> PreTrainedModel:
    """A checkpoint folder as a causal LM in eval mode (forward gives logits; generate works): a quantized one with
    GPTQModel, with the EoRA adapter of `path/adapter` applied when there is one; an unquantized one (gptq disabled)
    with `llmshrink.models.load`. `dtype` is a name of `llmshrink.models.DTYPES` or "auto" (GPTQModel's choice,
    float32 for an unquantized checkpoint)."""
    if not is_quantized(path):
        return models.load(path, "float32" if dtype == "auto" else dtype)
    from gptqmodel import GPTQModel
    from gptqmodel.adapter.adapter import Lora

    adapter_dir = Path(path) / ADAPTER_DIR
    adapter = None
    if adapter_dir.is_dir():
        rank = json.loads((adapter_dir / "adapter_config.json").read_text())["r"]
        adapter = Lora(rank=rank, path=str(adapter_dir.resolve()))
    torch_dtype = "auto" if dtype == "auto" else models.DTYPES[dtype]
    return GPTQModel.load(str(path), adapter=adapter, device=device(), dtype=torch_dtype).model.eval()
