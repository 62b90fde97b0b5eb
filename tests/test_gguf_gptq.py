"""GPTQ on llama.cpp block grids: the packed blocks are llama.cpp's format bit for bit, and the error feedback
beats llama.cpp's round-to-nearest on the same grid."""
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from llmshrink.gguf_gptq import FORMATS, dequantize, gptq_columns, pack


def _problem(rows: int = 48, cols: int = 256, tokens: int = 2048, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight matrix and correlated inputs with a few large-magnitude features, like LLM activations."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    x = torch.randn(tokens, cols, generator=g) @ mix * (1 + 4 * (torch.rand(cols, generator=g) > 0.95))
    return torch.randn(rows, cols, generator=g) * 0.05, x


@pytest.mark.parametrize("fmt", FORMATS)
def test_packed_blocks_dequantize_in_gguf_to_the_gptq_weights(fmt: str) -> None:
    w, x = _problem()
    codes, d, m = gptq_columns(w, x.T @ x, fmt)
    packed = pack(codes, d, m, fmt)
    qtype = GGMLQuantizationType[fmt.upper()]
    assert packed.shape == (w.shape[0], w.shape[1] // 32 * quants.GGML_QUANT_SIZES[qtype][1])
    ours = dequantize(codes, d, m).numpy()
    np.testing.assert_array_equal(quants.dequantize(packed, qtype), ours)


@pytest.mark.parametrize("fmt", ["q4_0", "q4_1", "q5_0"])
def test_gptq_has_less_output_error_than_llama_cpp_rounding(fmt: str) -> None:
    w, x = _problem()
    qtype = GGMLQuantizationType[fmt.upper()]
    rtn = torch.from_numpy(quants.dequantize(quants.quantize(w.numpy(), qtype), qtype))
    gptq = dequantize(*gptq_columns(w, x.T @ x, fmt))
    error = lambda q: float(((w - q) @ x.T).square().sum())  # noqa: E731
    assert error(gptq) < 0.8 * error(rtn)
    # and each weight stays on its block's grid: at most one step from the weight it replaced, mostly
    assert float((gptq - w).abs().mean()) < 2 * float((rtn - w).abs().mean())
