"""llama.cpp's importance matrix (`llama-imatrix`), computed from the pipeline's own calibration windows.

The importance matrix is llama.cpp's: for every weight matrix, the mean over calibration tokens
of the square of each input feature, which llama.cpp's quantizers use to weight each column's rounding error.
It is computed here with forward hooks on the transformers model and written in llama.cpp's GGUF imatrix layout
(`<tensor>.in_sum2`, `<tensor>.counts`, `imatrix.*` keys), which `llama-quantize --imatrix` reads.
For a tied embedding the output head's input statistics are stored under `token_embd.weight`: that matrix is the
output matrix too, and llama.cpp's quantizer then weights its columns by them.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from llmshrink import family

FILE_NAME = "imatrix.gguf"  # in the imatrix stage's output folder


def gguf_names(model: torch.nn.Module) -> dict[str, str]:
    """transformers module name of each linear layer (and `lm_head`) -> its llama.cpp tensor name (`blk.0.attn_q
    .weight`, `output.weight`), from gguf's own tensor-name map for the model's architecture."""
    import gguf

    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == family.gguf_arch(model.config.model_type))
    table = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and (mapped := table.get_name(name)):
            out[name] = mapped + ".weight"
    return out


def _accumulate(sums: dict[str, list], key: str, x: torch.Tensor) -> None:
    """Add the squares of `x`'s features, summed over its tokens, and its token count to `sums[key]`."""
    x = x.detach().float().reshape(-1, x.shape[-1])
    acc = sums.setdefault(key, [torch.zeros(x.shape[-1], dtype=torch.float64), 0])
    acc[0] += x.square().sum(0).double().cpu()
    acc[1] += x.shape[0]


@contextmanager
def _square_means(model: torch.nn.Module, names: dict[str, str]) -> Iterator[dict[str, list]]:
    """Within the block, forward passes accumulate [sum of x², token count] of the input of each named linear."""
    sums: dict[str, list] = {}
    modules = dict(model.named_modules())

    def hook(key: str):  # noqa: ANN202
        def record(_module: torch.nn.Module, args: tuple) -> None:
            _accumulate(sums, key, args[0])
        return record

    handles = [modules[name].register_forward_pre_hook(hook(gguf)) for name, gguf in names.items()]
    try:
        yield sums
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def imatrix(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 4) -> dict[str, tuple[np.ndarray, int]]:
    """llama.cpp tensor name -> (sum over the calibration tokens of each input feature's square, token count),
    for every linear layer of `model` over the token `windows` [n, seq_len]. The output head's input is the
    decoder's last hidden state: the head itself (the [tokens, vocabulary] logits) never runs."""
    names = gguf_names(model)
    head = next((n for n, g in names.items() if g == "output.weight"), None)
    with _square_means(model, {n: g for n, g in names.items() if n != head}) as sums:
        for batch in windows.split(batch_size):
            hidden = model.get_decoder()(batch.to(model.device), use_cache=False).last_hidden_state
            if head:
                _accumulate(sums, "output.weight", hidden)
    out = {key: (acc[0].numpy().astype(np.float32), acc[1]) for key, acc in sums.items()}
    if getattr(model.config, "tie_word_embeddings", False) and "output.weight" in out:
        out["token_embd.weight"] = out.pop("output.weight")
    return out


def write_imatrix(path: str | Path, data: dict[str, tuple[np.ndarray, int]], dataset: str, chunk_size: int) -> None:
    """`data` (as `imatrix` returns) as a GGUF imatrix file in llama.cpp's layout."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="imatrix")
    writer.add_type("imatrix")
    writer.add_array("imatrix.datasets", [dataset])
    chunks = max((count for _, count in data.values()), default=0) // chunk_size
    writer.add_uint32("imatrix.chunk_count", chunks)
    writer.add_uint32("imatrix.chunk_size", chunk_size)
    for name in sorted(data):
        sums, count = data[name]
        writer.add_tensor(f"{name}.in_sum2", sums.reshape(1, -1))
        writer.add_tensor(f"{name}.counts", np.array([[count]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_imatrix(path: str | Path) -> dict[str, np.ndarray]:
    """A GGUF imatrix file as llama-quantize hands it to the quantizer: tensor name -> in_sum2 / counts."""
    import gguf

    tensors = {t.name: np.asarray(t.data, dtype=np.float32).reshape(-1) for t in gguf.GGUFReader(str(path)).tensors}
    return {name.removesuffix(".in_sum2"): sums / tensors[name.removesuffix(".in_sum2") + ".counts"][0]
            for name, sums in tensors.items() if name.endswith(".in_sum2")}
