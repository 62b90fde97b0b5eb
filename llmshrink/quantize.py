"""GPTQ weight quantization and EoRA low-rank error compensation with GPTQModel.

GPTQ (Frantar et al. 2023) quantizes each linear layer of the decoder to `bits` with one scale
(and zero point) per `group_size` consecutive inputs, compensating each column's rounding error on
the columns not yet quantized through the inverse Hessian H = 2 X X^T of calibration activations.
EoRA (Liu et al. 2024) approximates the remaining error W - W_q by a rank-r product B A chosen in the
eigenspace of the activation covariance, so that it minimises ||(W - W_q - B A) X|| rather than the
plain weight error; it is kept as a LoRA adapter next to the untouched quantized checkpoint. The layers that
share an input (q/k/v, gate/up) share that covariance, and its eigendecomposition is computed once (`eigh_once`).
GPTQ's error feedback moves weights that width pruning set to zero; `gptq.keep_sparsity` sets them back to zero.
gptqmodel is imported only by the functions that use it: its import takes seconds and prints a banner.
"""
from __future__ import annotations

import math
import os
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

# GPTQModel sizes its CPU worker pool from this variable; on 2 cores the default fails with
# "requests 2 workers but parent 'cpu' only has 1". It must be set before gptqmodel is imported.
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

import torch
from transformers import AutoTokenizer

from llmshrink import canonical, family, hardware, models, timing
from llmshrink.atomic import atomic_dir, copy_tree, scratch
from llmshrink.calib import token_windows
from llmshrink.params.gptq import Eora, Gptq

CPU_INT4_GROUP_SIZES = (32, 64, 128, 256)  # ATen's int4 CPU matmul, which runs 4-bit layers on CPU
QUANT_KEYS = ("bits", "group_size", "desc_act", "sym", "damp_percent")
CALIB_BATCH = 4  # calibration windows per forward pass (memory/speed only; all windows have one length)


def check_family(src: str | Path, stage: str) -> None:
    """Refuse a family GPTQModel has no model definition for (its `MODEL_MAP`)."""
    from gptqmodel.models.auto import MODEL_MAP

    if (model_type := family.of_path(src).model_type) not in MODEL_MAP:
        raise family.Unsupported(model_type, stage, "GPTQModel has no model definition for it")


def check_gptq(p: Gptq, src: str | Path, on: torch.device) -> None:
    """Check the gptq params against the model in `src` before any work.

    On CPU GPTQModel runs 4-bit layers with ATen's int4 matmul, which needs the group size to divide every
    input width (2-, 3- and 8-bit layers run with a kernel that pads the last group, as do GPU kernels)."""
    if models.quant_method(src):
        raise ValueError(f"{src} declares a {models.quant_method(src)!r} quantization_config; GPTQ needs an unquantized checkpoint")
    check_family(src, "quantize")
    if on.type == "cpu" and p.bits == 4:
        widths = sorted({w for w, _ in models.linear_shapes(src).values()})
        common = math.gcd(*widths)
        if common % p.group_size or p.group_size not in CPU_INT4_GROUP_SIZES:
            allowed = sorted((g for g in CPU_INT4_GROUP_SIZES if common % g == 0), reverse=True)
            raise ValueError(
                f"gptq.group_size={p.group_size} does not suit the input widths {widths} of the quantized layers: "
                f"GPTQModel's 4-bit CPU kernel needs a group size in {list(CPU_INT4_GROUP_SIZES)} that divides them all; "
                f"choose one of {allowed} (or gptq.bits 2, 3 or 8)"
            )


def check_eora(p: Eora, src: str | Path) -> None:
    """Check the eora rank against the smallest quantized layer of the model in `src`."""
    smallest = min(min(shape) for shape in models.linear_shapes(src).values())
    if p.rank > smallest:
        raise ValueError(f"eora.rank={p.rank!r} is out of range; allowed [1, {smallest}] (smallest layer width)")


def calibration(src: str | Path, text: str, n_samples: int, seq_len: int, seed: int) -> list[dict[str, list[int]]]:
    """Random token windows of `text` in the format GPTQModel takes: a list of {input_ids, attention_mask}."""
    windows = token_windows(AutoTokenizer.from_pretrained(src), text, n_samples, seq_len, seed)
    return [{"input_ids": w.tolist(), "attention_mask": [1] * len(w)} for w in windows]


@contextmanager
def zeros_kept() -> Iterator[None]:
    """Within the block, GPTQModel's GPTQ returns every weight that is exactly 0 before quantization as exactly 0.

    GPTQ quantizes column by column and spreads each column's rounding error over the columns not yet quantized,
    which moves pruned weights away from 0. Here the quantized weights GPTQ.quantize returns are set to 0 at the
    pruned positions before GPTQModel packs them; 0 is on every GPTQ grid (the zero point is an integer code),
    so they pack to the zero-point code and dequantize to exactly 0. This is a post-hoc mask: SparseGPT's joint
    pruning and quantization (masked weights quantized to 0 inside the column loop, their error fed forward) would
    need the column permutation (act_group_aware, desc_act) that is local to GPTQ.quantize, so it cannot be
    hooked without copying that method."""
    from gptqmodel.quantization.gptq import GPTQ

    original = GPTQ.quantize

    def quantize(self: GPTQ, *args: Any, **kwargs: Any) -> tuple:
        pruned = self.module.weight.data == 0
        q, *rest = original(self, *args, **kwargs)
        return (q.masked_fill(pruned.to(q.device), 0), *rest)

    GPTQ.quantize = quantize
    try:
        yield
    finally:
        GPTQ.quantize = original


@contextmanager
def eigh_once() -> Iterator[None]:
    """Within the block, `torch.linalg.eigh` decomposes a matrix equal to the one it decomposed last only once.

    GPTQModel's EoRA (`gptqmodel.eora.eora.eora_compute_lora`) accumulates each linear layer's input covariance
    X X^T separately and eigendecomposes it in float64 on the layer's device. The layers that read the same input
    (q/k/v, gate/up) accumulate bitwise-equal covariances (seen on CPU and on an H100) and are processed together,
    so the last result serves them all: exactly the stock adapter, from one decomposition per distinct covariance.
    A match is `torch.equal` (O(d^2) against eigh's O(d^3)); anything else, other calls' arguments included, goes to
    the stock eigh.
    The precision stays GPTQModel's float64: with a float32 eigendecomposition the adapters of SmolLM2-135M moved by
    up to 24% (median 6%) in relative Frobenius norm of B·A per layer, for 0.05% in perplexity
    (benchmarks/results/eora.json), so float32 is not indistinguishable."""
    original = torch.linalg.eigh
    lock = threading.Lock()  # GPTQModel processes the layers of one input in a thread pool
    last: list[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = []

    def eigh(a: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return original(a, *args, **kwargs)
        with lock:
            if not (last and last[0][0].shape == a.shape and last[0][0].dtype == a.dtype
                    and last[0][0].device == a.device and torch.equal(last[0][0], a)):
                last[:] = [(a, original(a))]
            return type(last[0][1])(t.clone() for t in last[0][1])  # callers own what they get

    torch.linalg.eigh = eigh
    try:
        yield
    finally:
        torch.linalg.eigh = original


def _source_weight(dense: dict[str, torch.nn.Module], rows: dict[str, tuple[str, int, int]],
                   name: str) -> torch.Tensor:
    """The unquantized weight of the quantized module `name`: the module of that name, or the rows of a fused
    one that GPTQModel split (Phi-3's gate_up_proj into gate_proj and up_proj)."""
    if name in dense:
        return dense[name].weight
    prefix, projection = name.rsplit(".", 1)
    path, start, n = rows[projection]
    return dense[prefix.rsplit(".", 1)[0] + "." + path].weight[start:start + n]


@torch.no_grad()
def sparsity_kept(quantized: str | Path, source: str | Path, on: torch.device | None = None) -> dict[str, float | None]:
    """Over the linear layers GPTQ quantized: the share of weights that are exactly 0 in the unquantized checkpoint
    `source` (`source_sparsity`) and the share of those that dequantize to exactly 0 in `quantized` (`mask_kept`,
    None when `source` has no zeros there). Both load on `on` (default `hardware.device()`)."""
    on = on or hardware.device()
    # bfloat16: a weight whose code equals its zero point dequantizes to exactly 0 in any dtype, and GPTQModel's
    # CPU kernel for 8 bits has no float32; the source in its stored dtype, so no cast moves a weight to or from 0
    model = models.load(quantized, "bfloat16", on)
    source_model = models.load(source, models.saved_dtype(source), on)
    dense, rows = dict(source_model.named_modules()), family.of(source_model).rows(source_model.config)
    zeros = kept = weights = 0
    quantized = {id(m) for m in models.quantized_modules(model)}
    for name, module in model.named_modules():
        if id(module) in quantized and hasattr(module, "dequantize_weight"):
            pruned = _source_weight(dense, rows, name) == 0
            zeros, weights = zeros + int(pruned.sum()), weights + pruned.numel()
            kept += int((module.dequantize_weight().T.to(pruned.device)[pruned] == 0).sum())
    return {"source_sparsity": zeros / weights, "mask_kept": kept / zeros if zeros else None}


def gptq(src: str | Path, out: str | Path, p: Gptq, text: str, seed: int, on: torch.device | None = None) -> dict[str, Any]:
    """Quantize the checkpoint `src` with GPTQ into `out`; `text` is the calibration text. With gptq.keep_sparsity
    the weights that are 0 in `src` stay exactly 0 (`zeros_kept`). Returns the metrics, with the share of `src`'s
    zeros kept."""
    on = on or hardware.device()
    check_gptq(p, src, on)
    calib = calibration(src, text, p.samples, p.seq_len, seed)
    from gptqmodel import GPTQModel, QuantizeConfig

    with atomic_dir(out) as tmp, scratch(out) as work:
        # GPTQModel's default bf16 is emulated and about twice as slow on CPUs without AMX/AVX512-BF16
        dtype, keep = hardware.DTYPES[hardware.resolve_dtype("auto", on)], models.saved_dtype(src)
        # computing in another dtype than `src` is stored in: keep the model in memory to cast it back before saving
        offload = dtype == hardware.DTYPES[keep]
        config = QuantizeConfig(**{k: getattr(p, k) for k in QUANT_KEYS}, offload_to_disk=offload,
                                offload_to_disk_path=str(work / "offload") if offload else None)
        with timing.part("quantize/load"):
            model = GPTQModel.load(str(src), config, device=on.type, dtype=dtype)
        with timing.part("quantize/gptq"), zeros_kept() if p.keep_sparsity else nullcontext():
            model.quantize(calib, batch_size=CALIB_BATCH)
        if not offload:  # the unquantized tensors (embeddings, norms) as stored in `src`; scales stay float16
            for t in (*model.model.parameters(), *model.model.buffers()):
                if t.dtype == dtype:
                    t.data = t.data.to(hardware.DTYPES[keep])
        with timing.part("quantize/save"):
            model.save(str(tmp))
            canonical.canonicalize(tmp)
    del model
    with timing.part("quantize/sparsity_check"):
        kept = sparsity_kept(out, src, on)
    settings = {k: getattr(p, k) for k in (*QUANT_KEYS, "keep_sparsity", "samples", "seq_len")}
    return {"enabled": True, **settings, "device": hardware.name(on),
            "bytes": models.dir_bytes(out), "source_bytes": models.dir_bytes(src), **kept}


def eora(reference: str | Path, quantized: str | Path, out: str | Path, p: Eora, text: str, seed: int,
         on: torch.device | None = None) -> dict[str, Any]:
    """Copy the quantized checkpoint into `out` and add an EoRA adapter in `out/adapter` that compensates its
    error against the unquantized `reference`; `text` is the calibration text. Returns the metrics."""
    on = on or hardware.device()
    if not models.is_quantized(quantized):
        raise ValueError(f"eora.enabled=true needs a GPTQ checkpoint, but {quantized} is not quantized "
                         "(gptq.enabled=false): set eora.enabled=false")
    check_family(reference, "eora")
    check_eora(p, reference)
    calib = calibration(reference, text, p.samples, p.seq_len, seed)
    from gptqmodel import GPTQModel
    from gptqmodel.adapter.adapter import Lora

    with atomic_dir(out) as tmp, scratch(out):
        copy_tree(quantized, tmp)
        # GPTQModel torch.compiles the dequantization it calls once per layer here: eager is faster.
        with torch._dynamo.config.patch(disable=True), eigh_once():
            GPTQModel.adapter.generate(
                adapter=Lora(rank=p.rank, path=str(tmp / models.ADAPTER_DIR)),
                model_id_or_path=str(reference),
                quantized_model_id_or_path=str(quantized),
                calibration_dataset=calib,
                batch_size=CALIB_BATCH,
                device=on.type,
            )
        canonical.canonicalize(tmp)
    return {"enabled": True, "rank": p.rank, "samples": p.samples, "seq_len": p.seq_len, "device": hardware.name(on),
            "adapter_bytes": models.dir_bytes(Path(out) / models.ADAPTER_DIR),
            "bytes": models.dir_bytes(out)}
