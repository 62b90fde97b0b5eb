"""GPTQ on llama.cpp's own block grids, packed into a llama.cpp file: the error feedback of GPTQ, the format of
`llama-quantize`, so the result runs in llama.cpp, Ollama and LM Studio unchanged.

llama.cpp's quantizer rounds each 32-weight block to its grid independently (with an importance matrix it weights
each column's error by the mean square of its input, and searches the scale). GPTQ (Frantar et al. 2023) instead
quantizes one input column at a time and spreads each column's rounding error over the columns not yet quantized
through the inverse Hessian H = 2 X Xᵀ of calibration inputs, minimising ‖W X − Q X‖ for the whole row. Here the
grid of every 32-column group is a llama.cpp block format's (`BLOCK_RULES`: for Q4_0 / Q5_0 the scale llama.cpp's
importance-weighted search would pick, with the Hessian's diagonal as the importance; for Q4_1 / Q5_1 the block's
range; rounded to float16 as the file stores them), fixed when GPTQ reaches the group (as GPTQ's groupwise
variant does), so the codes pack into the format's blocks bit for bit (`pack`). Layers are quantized in order,
each on the outputs of the already quantized layers before it. GPTQModel's GGUF path is round-to-nearest, and
llama.cpp has no error feedback, so this one algorithm is written here (`gptq_columns`: the paper's Algorithm 1).

The file itself is llama.cpp's: `llama-quantize` writes it (tokenizer, metadata, the embedding / output matrix and
its type, with the importance matrix); the decoder's linear weights are then overwritten in place with the GPTQ
blocks of the same type and size.
"""
from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from llmshrink import export, family, hardware, imatrix, models, timing
from llmshrink.atomic import atomic_dir
from llmshrink.calib import token_windows
from llmshrink.params.gguf import GptqGguf
from llmshrink.params.gguf import GPTQ_GGUF_TYPES as FORMATS  # llama.cpp's 32-weight block formats
from llmshrink.wanda import layer0_inputs

BLOCK = 32


def _f16(x: torch.Tensor) -> torch.Tensor:
    """Rounded to float16 (as the file stores scales and minima), back in float32."""
    return x.to(torch.float16).to(torch.float32)


def _signed_max(w: torch.Tensor) -> torch.Tensor:
    """Per row, the value of largest magnitude with its sign (llama.cpp's `max` of the symmetric formats)."""
    return w.gather(1, w.abs().argmax(1, keepdim=True)).squeeze(1)


def _symmetric(levels: int) -> Callable[..., tuple[torch.Tensor, torch.Tensor, int, int]]:
    """Q4_0 / Q5_0: value = d * code, code in [-levels/2, levels/2 - 1]. The scale is llama.cpp's search with an
    importance matrix (`make_qx_quants`): for d = signed max / -(levels/2 + 0.1 i), i in -9..9, the codes, then
    the least-squares scale for those codes weighted by each column's importance; the best fit wins."""
    half = levels // 2

    def rule(w: torch.Tensor, importance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        top = _signed_max(w).unsqueeze(1)
        best = _f16(top.squeeze(1) / -half)
        best_fit = torch.full_like(best, -1.0)  # on w's device
        for step in range(-9, 10):
            d = top / -(half + 0.1 * step)
            safe = torch.where(d == 0, torch.ones_like(d), d)
            q = torch.round(w / safe).clamp(-half, half - 1)
            sum_xq, sum_qq = (importance * w * q).sum(1), (importance * q * q).sum(1)
            fit = torch.where(sum_qq > 0, sum_xq.square() / sum_qq.clamp_min(1e-30), torch.zeros_like(sum_qq))
            better = fit > best_fit
            best = torch.where(better, _f16(sum_xq / sum_qq.clamp_min(1e-30)), best)
            best_fit = torch.where(better, fit, best_fit)
        return best, torch.zeros_like(best), -half, half - 1
    return rule


def _asymmetric(levels: int) -> Callable[..., tuple[torch.Tensor, torch.Tensor, int, int]]:
    """Q4_1 / Q5_1: value = d * code + m, code in [0, levels - 1], d and m from the block's range."""
    def rule(w: torch.Tensor, importance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        low, high = w.min(1).values, w.max(1).values
        return _f16((high - low) / (levels - 1)), _f16(low), 0, levels - 1
    return rule


def _q8_0(w: torch.Tensor, importance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    d = _f16(w.abs().max(1).values / 127)
    return d, torch.zeros_like(d), -127, 127


# per format: block weights [rows, 32] and their columns' importance [32] -> (scale d, minimum m, lowest code,
# highest code), value = d * code + m
BLOCK_RULES = {"q4_0": _symmetric(16), "q5_0": _symmetric(32), "q4_1": _asymmetric(16), "q5_1": _asymmetric(32),
               "q8_0": _q8_0}


def round_to_grid(w: torch.Tensor, d: torch.Tensor, m: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """The nearest code of each weight of the column `w` on the grid d * code + m (a zero scale: code 0)."""
    safe = torch.where(d == 0, torch.ones_like(d), d)
    return torch.where(d == 0, torch.zeros_like(w), torch.round((w - m) / safe)).clamp(lo, hi)


def gptq_columns(w: torch.Tensor, hessian: torch.Tensor, fmt: str, damp: float = 0.01, block: int = 128
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ of one weight matrix `w` [rows, cols] (cols a multiple of 32) against `hessian` [cols, cols] on the
    block grid of `fmt`. Returns the integer codes [rows, cols], scales and minima [rows, cols / 32] (float16
    values in float32): the dequantized weight is codes * d + m, blockwise."""
    rule = BLOCK_RULES[fmt]
    w = w.float().clone()
    rows, cols = w.shape
    h = hessian.to(w.device, torch.float64).clone()  # on the weight's device (a GPU's, where there is one)
    importance = torch.diag(h).float()  # each input's mean square (up to a factor): llama.cpp's importance matrix
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damp * torch.diag(h).mean() * torch.eye(cols, dtype=h.dtype, device=h.device)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    codes = torch.zeros_like(w)
    scales = w.new_zeros(rows, cols // BLOCK)
    minima = w.new_zeros(rows, cols // BLOCK)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        w1, err1, hinv1 = w[:, start:end].clone(), w.new_zeros(rows, end - start), hinv[start:end, start:end]
        for i in range(end - start):
            col = start + i
            if col % BLOCK == 0:  # the group's grid, from its weights as updated so far
                d, m, lo, hi = rule(w1[:, i : i + BLOCK], importance[col : col + BLOCK])
                scales[:, col // BLOCK], minima[:, col // BLOCK] = d, m
            q = round_to_grid(w1[:, i], d, m, lo, hi)
            codes[:, col] = q
            err = (w1[:, i] - (q * d + m)) / hinv1[i, i]
            w1[:, i:] -= err.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            err1[:, i] = err
        w[:, end:] -= err1 @ hinv[start:end, end:]
    return codes, scales, minima


def dequantize(codes: torch.Tensor, scales: torch.Tensor, minima: torch.Tensor) -> torch.Tensor:
    """codes * d + m with each block's d and m, [rows, cols] float32."""
    expand = lambda t: t.repeat_interleave(BLOCK, dim=1)  # noqa: E731
    return codes * expand(scales) + expand(minima)


def pack(codes: torch.Tensor, scales: torch.Tensor, minima: torch.Tensor, fmt: str) -> np.ndarray:
    """The codes as llama.cpp blocks of `fmt` (ggml-common.h's block_q4_0 ... block_q8_0), [rows, bytes per row]."""
    rows, cols = codes.shape
    nb = cols // BLOCK
    c = codes.to(torch.int64).numpy().reshape(rows, nb, BLOCK)
    half = lambda t: t.numpy().astype(np.float16).view(np.uint8).reshape(rows, nb, 2)  # noqa: E731
    parts = [half(scales)] + ([half(minima)] if fmt in ("q4_1", "q5_1") else [])
    if fmt == "q8_0":
        parts.append(c.astype(np.int8).view(np.uint8))
    else:
        u = c + (16 if fmt == "q5_0" else 8 if fmt == "q4_0" else 0)  # stored unsigned
        if fmt in ("q5_0", "q5_1"):  # bit 4 of code k is bit k of a little-endian uint32
            high = ((u >> 4) & 1).astype(np.uint64) << np.arange(BLOCK, dtype=np.uint64)
            parts.append(high.sum(-1).astype("<u4").view(np.uint8).reshape(rows, nb, 4))
        parts.append(((u[..., :16] & 0xF) | ((u[..., 16:] & 0xF) << 4)).astype(np.uint8))
    return np.concatenate(parts, axis=-1).reshape(rows, -1)


@torch.no_grad()
def quantize_layers(model: torch.nn.Module, windows: torch.Tensor, formats: dict[str, str], names: dict[str, str],
                    damp: float = 0.01, batch_size: int = 4) -> dict[str, tuple[torch.Tensor, ...]]:
    """GPTQ of every linear layer named in `names` (module name -> llama.cpp tensor name) on the grid of its
    tensor's format in `formats` (tensor name -> format), layer after layer, each layer's Hessian from the outputs
    of the quantized layers before it; the model's weights are replaced by their dequantized values. The output
    matrix, when named, last (on the final hidden states of the quantized decoder). Returns tensor name ->
    (codes, d, m)."""
    out: dict[str, tuple[torch.Tensor, ...]] = {}
    batches = layer0_inputs(model, windows.split(batch_size))
    decoder = model.get_decoder()
    prefix = {id(layer): name for name, layer in model.named_modules() if any(layer is l for l in decoder.layers)}
    for layer in tqdm(decoder.layers, desc="GPTQ"):
        linears = {f"{prefix[id(layer)]}.{n}": m for n, m in layer.named_modules()
                   if isinstance(m, torch.nn.Linear) and f"{prefix[id(layer)]}.{n}" in names}
        hessians = _hessians(linears, lambda: [layer(h, **kwargs) for h, kwargs in batches])
        for n, m in linears.items():
            out[names[n]] = _quantize(m, hessians[n], formats[names[n]], damp)
        batches = [(_first(layer(h, **kwargs)), kwargs) for h, kwargs in batches]
    head = model.get_output_embeddings()
    if (name := next(n for n, m in model.named_modules() if m is head)) in names:
        # its input: the final norm of the last layer's output (the logits are never needed)
        x = torch.cat([decoder.norm(h).reshape(-1, h.shape[-1]) for h, _ in batches]).double().cpu()
        out[names[name]] = _quantize(head, 2 * x.T @ x / len(x), formats[names[name]], damp)
    return out


def _hessians(linears: dict[str, torch.nn.Module], run: Callable[[], Any]) -> dict[str, torch.Tensor]:
    """2 X Xᵀ / tokens of each linear's input over the forward passes `run` makes."""
    sums = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for n, m in linears.items()}
    tokens = dict.fromkeys(linears, 0)
    last: list = [None, None]  # the latest input and its X Xᵀ: q/k/v (and gate/up) share one input

    def accumulate(n: str):  # noqa: ANN202
        def hook(_module: torch.nn.Module, args: tuple) -> None:
            if last[0] is not args[0]:
                x = args[0].reshape(-1, args[0].shape[-1]).float()
                last[:] = [args[0], (x.T @ x).double().cpu()]  # one batch in float32, summed in float64
            sums[n].add_(last[1])
            tokens[n] += args[0].numel() // args[0].shape[-1]
        return hook

    handles = [m.register_forward_pre_hook(accumulate(n)) for n, m in linears.items()]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
        last.clear()
    return {n: 2 * sums[n] / tokens[n] for n in linears}


def _quantize(m: torch.nn.Linear, hessian: torch.Tensor, fmt: str, damp: float) -> tuple[torch.Tensor, ...]:
    """GPTQ of one linear layer in place (its weight becomes the dequantized one); its codes, scales, minima."""
    if m.in_features % BLOCK:
        raise ValueError(f"gptq_gguf needs input widths divisible by {BLOCK}; a layer has {m.in_features}")
    codes, d, mins = gptq_columns(m.weight.data, hessian, fmt, damp)
    m.weight.data = dequantize(codes, d, mins).to(m.weight.dtype)
    return codes.cpu(), d.cpu(), mins.cpu()


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _converter_rows(name: str, rows: np.ndarray, config: Any) -> np.ndarray:
    """Rows of a matrix in the order llama.cpp's converter writes them: for the LLaMA architectures it permutes
    the query and key rows of each head into its rotary layout (`LlamaModel.permute`); transformers undoes it."""
    heads = {"attn_q.weight": config.num_attention_heads, "attn_k.weight": config.num_key_value_heads}
    n_head = next((h for suffix, h in heads.items() if name.endswith(suffix)), None)
    if config.model_type not in ("llama", "mistral") or n_head is None:
        return rows
    return rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, -1).swapaxes(1, 2).reshape(rows.shape)


def write_blocks(file: Path, blocks: dict[str, tuple[torch.Tensor, ...]], config: Any) -> None:
    """Overwrite, in the GGUF file `file`, each tensor of `blocks` (llama.cpp name -> codes, d, m) with its packed
    blocks in the tensor's own type (one of `FORMATS`), which must have the same shape."""
    import gguf

    reader = gguf.GGUFReader(str(file), "r+")
    tensors = {t.name: t for t in reader.tensors}
    for name, (codes, d, m) in blocks.items():
        t = tensors[name]
        if (fmt := t.tensor_type.name.lower()) not in FORMATS:
            raise ValueError(f"{file}: {name} is {t.tensor_type.name}, not one of {list(FORMATS)}")
        packed = _converter_rows(name, pack(codes, d, m, fmt), config)
        if packed.shape != t.data.shape:
            raise ValueError(f"{file}: {name} has shape {t.data.shape}, the GPTQ blocks {packed.shape}")
        t.data[...] = packed
    reader.data.flush()
    del reader


def tensor_names(model: torch.nn.Module) -> dict[str, str]:
    """Module name -> llama.cpp tensor name of every matrix of the file: the decoder's linear layers and the output
    matrix (for a tied embedding, the file's `token_embd.weight`, which is then the output matrix too)."""
    names = imatrix.gguf_names(model)
    if model.config.tie_word_embeddings:
        names = {n: "token_embd.weight" if g == "output.weight" else g for n, g in names.items()}
    return names


def formats_up_to(top: str) -> list[str]:
    """The 32-block formats no larger than `top`."""
    from llmshrink.allocate import tensor_bytes

    return [f for f in FORMATS if tensor_bytes((1, BLOCK), f, 1) <= tensor_bytes((1, BLOCK), top, 1)]


def fixed_bytes(src: str | Path, matrix: Path, weights: dict[str, torch.Tensor], tmp: Path) -> int:
    """The bytes of `src`'s llama.cpp file other than its matrices `weights` (tensor name -> weight): those of a
    llama-quantize file of `src` (made in `tmp`, then removed) less its matrices, all in Q4_0."""
    from llmshrink.allocate import tensor_bytes

    reference = export.to_gguf(src, tmp / "reference", "q4_0", matrix, {"token_embd": "q4_0", "output": "q4_0"},
                               pure=True)["bytes"]
    shutil.rmtree(tmp / "reference")
    return reference - sum(tensor_bytes(tuple(w.shape), "q4_0") for w in weights.values())


def matrices(model: torch.nn.Module, names: dict[str, str]) -> dict[str, torch.Tensor]:
    """Tensor name -> weight of every module of `names` (module name -> tensor name)."""
    modules = dict(model.named_modules())
    return {g: modules[n].weight.detach() for n, g in names.items()}


def plan_types(model: torch.nn.Module, windows: torch.Tensor, names: dict[str, str], src: str | Path, matrix: Path,
               p: GptqGguf, tmp: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Tensor name -> format of every matrix so that the file fits in `p.budget` of `src`'s bytes (`allocate`):
    formats no larger than `p.type`, sensitivities from the Fisher of `p.fisher_samples` windows."""
    from llmshrink import allocate

    formats, weights = formats_up_to(p.type), matrices(model, names)
    with timing.part("gptq_gguf/fisher"):
        fishers = allocate.fisher(model, windows[: p.fisher_samples], names)
    importance = {t: torch.from_numpy(v) for t, v in imatrix.read_imatrix(matrix).items()}
    damage = allocate.sensitivities(weights, fishers, allocate.round_all(weights, importance, formats))
    return allocate.plan(weights, damage, formats, fixed_bytes(src, matrix, weights, tmp),
                         int(p.budget * models.dir_bytes(src)))


def make(src: str | Path, out: str | Path, matrix: str | Path, p: GptqGguf, text: str, seed: int
         ) -> dict[str, Any]:
    """GPTQ of the dense checkpoint `src` on llama.cpp block grids, written into `out/model.gguf` (llama-quantize's
    file with the importance matrix file `matrix`, its GPTQ weights replaced), atomically. The decoder's matrices
    are in `p.type` and the embedding in `p.embedding_type`, or with `p.budget` each matrix in the format
    `plan_types` picks. With `p.method` "rtn" the matrices keep llama-quantize's own rounding (no GPTQ). Each
    GPTQ weight is checked against the file as transformers reads it back. Returns the metrics. Llama only: the file's row layout of other families' weights is not what `write_blocks` writes
    (refused before any work)."""
    if (model_type := models.read_config(src)["model_type"]) != "llama":
        raise family.Unsupported(model_type, "gptq_gguf", "GPTQ on llama.cpp's grids is written and checked for "
                                 "the Llama layout only; use export (llama-quantize) for this family")
    model = models.load(src, "float32")
    windows = token_windows(models.load_tokenizer(src), text, p.samples, p.seq_len, seed)
    names = tensor_names(model)
    embedding = next(g for g in names.values() if not g.startswith("blk."))
    with atomic_dir(out) as tmp:
        if p.budget is None:
            formats, planned = {g: p.type for g in names.values()}, {}
            formats[embedding] = p.embedding_type
        else:
            formats, planned = plan_types(model, windows, names, src, Path(matrix), p, tmp)
        quantized = {n: g for n, g in names.items() if p.method == "gptq" and (g != embedding or p.embedding_gptq)}
        with timing.part("gptq_gguf/gptq"):
            blocks = quantize_layers(model, windows, formats, quantized, p.damp_percent) if quantized else {}
        file_type = Counter(formats.values()).most_common(1)[0][0]
        types = {} if formats[embedding] == "auto" else {"token_embd": formats[embedding], "output": formats[embedding]}
        types |= {f"^{re.escape(t)}$": f for t, f in formats.items() if t != embedding and f != file_type}
        described = export.to_gguf(src, tmp / "container", file_type, matrix, types, pure=True)
        (tmp / "container" / export.GGUF_NAME).rename(tmp / export.GGUF_NAME)
        (tmp / "container").rmdir()
        write_blocks(tmp / export.GGUF_NAME, blocks, model.config)
        read_back = dict(models.load(tmp, "float32", torch.device("cpu")).named_modules())
        ours = dict(model.named_modules())
        for name in quantized:  # the tied embedding is checked as the head
            if not torch.equal(read_back[name].weight, ours[name].weight.cpu()):
                raise RuntimeError(f"{name}: the GGUF file does not hold the GPTQ weights (row order?)")
    return {**described, **export.describe(Path(out) / export.GGUF_NAME), "gptq_type": p.type,
            "method": p.method, "embedding_gptq": p.embedding_gptq, **planned,
            "samples": p.samples, "seq_len": p.seq_len, "damp_percent": p.damp_percent,
            "device": hardware.name(model.device)}
