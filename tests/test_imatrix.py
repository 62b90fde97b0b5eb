"""llama.cpp's importance matrix from the pipeline's calibration windows: the statistics are the inputs' mean
squares, the file is llama.cpp's layout, and (where `make edge` built llama-quantize) the quantizer reads it and
uses it: the weighted rounding error it minimises is lower than without it."""
from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from llmshrink import export, imatrix, llamacpp, models, params
from llmshrink.calib import token_windows

ROOT = Path(__file__).resolve().parents[1]
QUANTIZER = llamacpp.tool("llama-quantize").is_file()


@pytest.fixture(scope="module")
def calibration(tiny_dir: Path, prose: str) -> torch.Tensor:
    return token_windows(models.load_tokenizer(tiny_dir), prose, 4, 64, seed=0)


@pytest.fixture(scope="module")
def matrix(tiny_dir: Path, calibration: torch.Tensor) -> dict:
    return imatrix.imatrix(models.load(tiny_dir), calibration)


def test_every_matrix_gets_its_inputs_mean_square(tiny_dir: Path, calibration: torch.Tensor, matrix: dict) -> None:
    model = models.load(tiny_dir)
    assert set(matrix) == set(imatrix.gguf_names(model).values()) - {"output.weight"} | (
        {"token_embd.weight"} if model.config.tie_word_embeddings else {"output.weight"})
    seen = []
    model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda _m, a: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        model(calibration)
    x = torch.cat(seen).double()
    sums, count = matrix["blk.1.ffn_down.weight"]
    assert count == calibration.numel()
    np.testing.assert_allclose(sums, x.square().sum(0).numpy(), rtol=1e-5)


def test_stage_output_does_not_depend_on_the_cpu(tiny_dir: Path, prose: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage computes in float32 on every CPU, so whether bf16 is the faster dtype here cannot change the file."""
    settings = params.read(ROOT / "params.yaml")
    settings["imatrix"].update(samples=4, seq_len=64)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings))
    (tmp_path / "calibration.txt").write_text(prose, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    stage = runpy.run_path(str(ROOT / "stages" / "imatrix.py"))["main"]
    files = []
    for fastest in ("float32", "bfloat16"):
        monkeypatch.setattr("llmshrink.hardware.fastest_cpu_dtype", lambda fastest=fastest: fastest)
        stage([str(tiny_dir), "calibration.txt", fastest])
        files.append((tmp_path / fastest / imatrix.FILE_NAME).read_bytes())
    assert files[0] == files[1]


def test_file_round_trip_gives_mean_squares(tmp_path: Path, matrix: dict) -> None:
    imatrix.write_imatrix(tmp_path / "m.gguf", matrix, "prose", 64)
    back = imatrix.read_imatrix(tmp_path / "m.gguf")
    assert set(back) == set(matrix)
    for name, (sums, count) in matrix.items():
        np.testing.assert_allclose(back[name], sums / count, rtol=1e-6)


@pytest.mark.skipif(not QUANTIZER, reason="llama-quantize not built (`make edge`)")
def test_llama_quantize_uses_the_importance_matrix(tiny_dir: Path, tmp_path: Path, matrix: dict) -> None:
    import gguf

    imatrix.write_imatrix(tmp_path / "m.gguf", matrix, "prose", 64)
    weights = dict(models.load(tiny_dir).named_parameters())
    errors = {}
    for name, file in (("plain", None), ("imatrix", tmp_path / "m.gguf")):
        export.to_gguf(tiny_dir, tmp_path / name, "q4_0", file)
        tensor = next(t for t in gguf.GGUFReader(str(tmp_path / name / export.GGUF_NAME)).tensors
                      if t.name == "blk.1.ffn_down.weight")
        q = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        w = weights["model.layers.1.mlp.down_proj.weight"].detach().numpy()
        errors[name] = float(((q - w) ** 2 * (matrix["blk.1.ffn_down.weight"][0])).sum())
    assert errors["imatrix"] < errors["plain"]
