"""GPTQ on llama.cpp block grids: the packed blocks are llama.cpp's format bit for bit, and the error feedback
beats llama.cpp's round-to-nearest on the same grid."""
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from llmshrink import export, imatrix, llamacpp, models
from llmshrink.calib import token_windows, tokenize
from llmshrink.gguf_gptq import FORMATS, dequantize, gptq_columns, make, pack
from llmshrink.params.gguf import GptqGguf
from llmshrink.perplexity import windows

QUANTIZER = llamacpp.tool("llama-quantize").is_file()


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


@pytest.mark.parametrize("fmt", FORMATS)
def test_gptq_and_rounding_stay_on_the_weights_device(fmt: str) -> None:
    """On a GPU the weight is there and the Hessian / importance on the CPU: every tensor the algorithm makes
    must follow the weight. The meta device stands in for the GPU (mixing it with the CPU raises, as CUDA does)."""
    from llmshrink.allocate import round_to_nearest

    w = torch.empty(64, 128, device="meta")
    assert all(t.device == w.device for t in gptq_columns(w, torch.eye(128), fmt))
    assert round_to_nearest(w, torch.rand(128), fmt).device == w.device


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


@pytest.mark.skipif(not QUANTIZER, reason="llama-quantize not built (`make edge`)")
@pytest.mark.parametrize("head", [False, True])
def test_gguf_file_holds_the_gptq_weights_and_beats_llama_cpp_on_held_out_text(
        head: bool, tiny_dir: Path, prose: str, tmp_path: Path) -> None:
    """The stage's file loads in transformers with every GPTQ weight (the stage checks it bit for bit), and its
    logits on text GPTQ never saw are closer to the float model's than llama-quantize's Q4_0 of the same model
    with the same importance matrix (tied embedding Q8_0 in both)."""
    tokenizer = models.load_tokenizer(tiny_dir)
    matrix = tmp_path / "imatrix.gguf"
    imatrix.write_imatrix(matrix, imatrix.imatrix(models.load(tiny_dir), token_windows(tokenizer, prose[:40_000], 8, 64, 0)),
                          "prose", 64)
    p = GptqGguf(enabled=True, method="gptq", type="q4_0", embedding_type="q8_0", embedding_gptq=head, samples=8,
                 seq_len=64,
                 damp_percent=0.01, budget=None, fisher_samples=8)
    metrics = make(tiny_dir, tmp_path / "gptq", matrix, p, prose[:40_000], seed=0)
    assert set(metrics["tensor_types"]) == {"F32", "Q4_0", "Q8_0"} and metrics["tensor_types"]["Q8_0"] == 1
    export.to_gguf(tiny_dir, tmp_path / "rtn", "q4_0", matrix, {"token_embd": "q8_0", "output": "q8_0"}, pure=True)
    held_out = torch.stack(windows(tokenize(tokenizer, prose[-20_000:]), 64)[:8])
    with torch.no_grad():
        exact = models.load(tiny_dir)(held_out).logits
        error = {name: float((models.load(tmp_path / name)(held_out).logits - exact).square().mean())
                 for name in ("gptq", "rtn")}
    assert error["gptq"] < 0.9 * error["rtn"]


@pytest.mark.skipif(not QUANTIZER, reason="llama-quantize not built (`make edge`)")
def test_budget_mixes_formats_and_the_file_has_the_predicted_bytes(tiny_dir: Path, prose: str, tmp_path: Path) -> None:
    """With a budget between the all-Q4_0 and the all-Q8_0 file, the plan mixes formats, the file it makes has
    exactly the predicted bytes, within the budget, and the GPTQ weights are the file's (the stage checks)."""
    tokenizer = models.load_tokenizer(tiny_dir)
    matrix = tmp_path / "imatrix.gguf"
    imatrix.write_imatrix(matrix, imatrix.imatrix(models.load(tiny_dir), token_windows(tokenizer, prose[:40_000], 8, 64, 0)),
                          "prose", 64)
    ends = [export.to_gguf(tiny_dir, tmp_path / f, f, matrix, {"token_embd": f}, pure=True)["bytes"]
            for f in ("q4_0", "q8_0")]
    budget = sum(ends) / 2 / models.dir_bytes(tiny_dir)
    p = GptqGguf(enabled=True, method="gptq", type="q8_0", embedding_type="auto", embedding_gptq=False, samples=8,
                 seq_len=64,
                 damp_percent=0.01, budget=budget, fisher_samples=4)
    metrics = make(tiny_dir, tmp_path / "gptq", matrix, p, prose[:40_000], seed=0)
    assert metrics["bytes"] == metrics["predicted_bytes"] <= metrics["budget_bytes"] < ends[1]
    assert len([f for f, n in metrics["formats"].items() if n]) >= 2
