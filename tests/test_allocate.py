"""Mixed precision under a byte budget: exact bytes per format, the greedy assignment, the Fisher sensitivities."""
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from llmshrink import allocate, models
from llmshrink.gguf_gptq import FORMATS, dequantize, pack
from llmshrink.params import InputError


@pytest.mark.parametrize("fmt", FORMATS)
def test_tensor_bytes_are_gguf_bytes_padded_to_the_alignment(fmt: str) -> None:
    kind = GGMLQuantizationType[fmt.upper()]
    assert allocate.tensor_bytes((576, 1536), fmt) == int(np.prod(quants.quant_shape_to_byte_shape((576, 1536), kind)))
    raw = int(np.prod(quants.quant_shape_to_byte_shape((3, 32), kind)))  # 54 bytes for q4_0: padded to 64
    assert allocate.tensor_bytes((3, 32), fmt) == -(-raw // 32) * 32


def test_round_to_nearest_keeps_weights_already_on_the_q4_1_grid() -> None:
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (8, 64), generator=g).float()
    codes[:, ::32], codes[:, 1::32] = 0, 15  # every block spans its whole range
    d, m = torch.rand(8, 2, generator=g).half().float() / 10, -torch.rand(8, 2, generator=g).half().float()
    w = dequantize(codes, d, m)
    error = {f: float((allocate.round_to_nearest(w, torch.ones(64), f) - w).abs().max()) for f in ("q4_1", "q4_0")}
    assert error["q4_1"] < 1e-3 < error["q4_0"]  # up to the float16 rounding of the re-derived scale
    packed = pack(codes, d, m, "q4_1")  # and those codes are what the file would hold
    assert packed.shape == (8, 2 * 20)


def test_assign_takes_the_cheapest_damage_per_byte_until_the_budget_fits() -> None:
    options = {"a": {"q8_0": (100, 0.0), "q4_0": (50, 1.0)},  # 0.02 per byte saved
               "b": {"q8_0": (100, 0.0), "q4_0": (50, 5.0)},  # 0.1 per byte saved
               "c": {"q8_0": (100, 0.0), "q5_0": (70, 2.0), "q4_1": (60, 0.5)}}  # q5_0 is dominated by q4_1
    assert allocate.assign(options, 300) == {"a": "q8_0", "b": "q8_0", "c": "q8_0"}
    assert allocate.assign(options, 260) == {"a": "q8_0", "b": "q8_0", "c": "q4_1"}
    assert allocate.assign(options, 250) == {"a": "q4_0", "b": "q8_0", "c": "q4_1"}
    assert allocate.assign(options, 160) == {"a": "q4_0", "b": "q4_0", "c": "q4_1"}
    with pytest.raises(InputError, match="at least 160 bytes"):
        allocate.assign(options, 159)


def test_fisher_is_the_mean_squared_gradient_of_each_window(tiny_dir: Path) -> None:
    model = models.load(tiny_dir)
    windows = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    name = "model.layers.1.mlp.down_proj"
    f = allocate.fisher(model, windows, {name: "blk.1.ffn_down.weight"})["blk.1.ffn_down.weight"]
    grads = []
    for w in windows:
        model.zero_grad()
        model(w[None], labels=w[None]).loss.backward()
        grads.append(dict(model.named_modules())[name].weight.grad.clone())
    assert torch.allclose(f, torch.stack(grads).square().mean(0), rtol=1e-5, atol=1e-12)
    assert all(p.requires_grad for p in model.parameters())  # left as it was


def test_formats_up_to_a_type_are_those_of_no_more_bits() -> None:
    from llmshrink.gguf_gptq import formats_up_to

    assert formats_up_to("q4_1") == ["q4_0", "q4_1"]
    assert formats_up_to("q5_0") == ["q4_0", "q4_1", "q5_0"]
    assert formats_up_to("q8_0") == list(FORMATS)
