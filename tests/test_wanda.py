"""WANDA width pruning: N:M and unstructured masks equal the lowest |W|·‖X‖₂ scores computed here
independently, pruned activations feed the next layer, and the stage writes exact zeros and their count."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmshrink import family, hardware, models, wanda
from llmshrink.calib import token_windows
from llmshrink.params import MODULES, read
from llmshrink.params.width import Wanda

ROOT = Path(__file__).resolve().parents[1]
BASE = read(ROOT / "params.yaml")
PROJ = MODULES
STAGE_ARGS = ["models/depth", "data/calibration.txt", "models/width", "metrics/width.json"]


@pytest.fixture(scope="module")
def calib(tiny_dir: Path, prose: str) -> torch.Tensor:
    return token_windows(AutoTokenizer.from_pretrained(tiny_dir), prose, 8, 64, seed=0)


def pruned(tiny_dir: Path, calib: torch.Tensor, **overrides) -> torch.nn.Module:
    model = models.load(tiny_dir)
    wanda.prune(model, calib, Wanda(**{**BASE["wanda"], **overrides}), batch_size=3)
    return model


@torch.no_grad()
def own_norms(model: torch.nn.Module, calib: torch.Tensor, layer: int) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ of the inputs of every linear module of decoder layer `layer`, from a full forward pass."""
    sums: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in family.layers(model)[layer].named_modules():
        if isinstance(module, torch.nn.Linear):
            def hook(_m, args, name=name):
                x = args[0].double().flatten(0, 1)
                sums[name] = sums.get(name, 0) + (x * x).sum(0)
            handles.append(module.register_forward_pre_hook(hook))
    model(calib)
    for h in handles:
        h.remove()
    return {name.rsplit(".", 1)[-1]: s.sqrt() for name, s in sums.items()}


def expected_mask(weight: torch.Tensor, norm: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The n lowest |W|·‖X‖ of each group of m, by argsort (the library uses topk)."""
    score = (weight.double().abs() * norm).reshape(weight.shape[0], -1, m)
    mask = torch.zeros_like(score, dtype=torch.bool)
    mask.scatter_(2, score.argsort(dim=2)[..., :n], True)
    return mask.reshape(weight.shape)


def linears(model: torch.nn.Module, layer: int) -> dict[str, torch.Tensor]:
    layer_module = family.layers(model)[layer]
    return {name.rsplit(".", 1)[-1]: m.weight.detach() for name, m in layer_module.named_modules()
            if isinstance(m, torch.nn.Linear)}


@pytest.mark.parametrize("pattern", ["1:2", "3:4", "1:8", "6:8", "12:16"])
def test_every_group_of_m_has_exactly_n_zeros(tiny_dir, calib, pattern):
    n, m = map(int, pattern.split(":"))
    model = pruned(tiny_dir, calib, pattern=pattern)
    for layer in range(model.config.num_hidden_layers):
        for name, w in linears(model, layer).items():
            zeros = (w == 0).reshape(w.shape[0], -1, m).sum(-1)
            assert (zeros == n).all(), (layer, name)


@pytest.mark.parametrize("pattern", ["2:4", "1:8"])
def test_layer0_zeros_are_the_lowest_scores(tiny_dir, calib, pattern):
    n, m = map(int, pattern.split(":"))
    dense = models.load(tiny_dir)
    norms = own_norms(dense, calib, 0)  # layer 0's inputs do not depend on pruning
    model = pruned(tiny_dir, calib, pattern=pattern)
    for name, w in linears(dense, 0).items():
        assert torch.equal(linears(model, 0)[name] == 0, expected_mask(w, norms[name], n, m)), name


def test_unstructured_zeros_are_the_lowest_scores_of_each_row(tiny_dir, calib):
    dense = models.load(tiny_dir)
    norms = own_norms(dense, calib, 0)
    model = pruned(tiny_dir, calib, pattern="unstructured:0.3")
    for name, w in linears(dense, 0).items():
        k = int(w.shape[1] * 0.3)
        want = expected_mask(w, norms[name], k, w.shape[1])  # one group = the whole row
        got = linears(model, 0)[name] == 0
        assert torch.equal(got, want), name
        assert (got.sum(1) == k).all()


def test_pruned_activations_flow_to_the_next_layer(tiny_dir, calib):
    model = pruned(tiny_dir, calib, pattern="2:4")
    # norms of layer 1's inputs in a model whose layer 0 alone is pruned
    half = models.load(tiny_dir)
    family.layers(half)[0].load_state_dict(family.layers(model)[0].state_dict())
    flow_norms, dense_norms = own_norms(half, calib, 1), own_norms(models.load(tiny_dir), calib, 1)
    differs = False
    for name, w in linears(half, 1).items():
        got = linears(model, 1)[name] == 0
        assert torch.equal(got, expected_mask(w, flow_norms[name], 2, 4)), name
        differs |= not torch.equal(got, expected_mask(w, dense_norms[name], 2, 4))
    assert differs, "dense-model activations would have given the same masks: the check proves nothing"


def test_dense_layers_and_unlisted_modules_stay_dense(tiny_dir, calib):
    dense = models.load(tiny_dir)
    model = pruned(tiny_dir, calib, pattern="2:4", modules=["q_proj", "down_proj"], dense_layers=[0, 5])
    for layer in range(model.config.num_hidden_layers):
        for name, w in linears(model, layer).items():
            zeros = int((w == 0).sum())
            if layer in (0, 5) or name not in ("q_proj", "down_proj"):
                assert torch.equal(w, linears(dense, layer)[name]), (layer, name)
            else:
                assert zeros == w.numel() // 2, (layer, name)


@pytest.mark.parametrize("pattern", ["0:4", "unstructured:0", "unstructured:0.0"])
def test_a_pattern_that_prunes_nothing_is_refused(pattern):
    # pruning nothing is `wanda.enabled: false` (the stage then copies the model, see below), not a zero pattern
    with pytest.raises(ValueError, match=r"wanda\.pattern"):
        Wanda(**{**BASE["wanda"], "pattern": pattern})


@pytest.mark.parametrize("pattern, n, m, target, name", [
    ("1:8", 1, 8, 0.125, "1:8"), (" 2 : 4 ", 2, 4, 0.5, "2:4"), ("unstructured:0.5", 0, 0, 0.5, "unstructured:0.5"),
])
def test_pattern_is_parsed(pattern, n, m, target, name):
    s = Wanda(**{**BASE["wanda"], "pattern": pattern, "dense_layers": [3, 1, 3]})
    assert (s.n, s.m, s.target, s.name, s.dense_layers) == (n, m, target, name, (1, 3))


def stage_dir(tmp_path: Path, tiny_dir: Path, prose: str, monkeypatch, **wanda_params) -> Path:
    """A pipeline workspace with params.yaml, models/depth (the tiny model, saved in bfloat16) and
    data/calibration.txt."""
    p = {**BASE, "wanda": {**BASE["wanda"], "samples": 6, "seq_len": 48, **wanda_params}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    models.save(models.load(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir), tmp_path / "models" / "depth", "bfloat16")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "calibration.txt").write_text(prose)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_stage() -> None:
    """stages/width_prune.py with the paths of dvc.yaml, from the current directory."""
    runpy.run_path(str(ROOT / "stages" / "width_prune.py"))["main"](STAGE_ARGS)


def test_stage_metric_counts_the_zeros_of_the_saved_checkpoint(tmp_path, tiny_dir, prose, monkeypatch):
    work = stage_dir(tmp_path, tiny_dir, prose, monkeypatch, pattern="1:8", dense_layers=[2])
    run_stage()
    metrics = json.loads((work / "metrics" / "width.json").read_text())
    weights = load_file(work / "models" / "width" / "model.safetensors")
    counted = {k.removeprefix("model.").removesuffix(".weight"): int((w == 0).sum())
               for k, w in weights.items() if k.rsplit(".", 2)[-2] in PROJ and not k.startswith("model.layers.2.")}
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}  # the dtype of its input checkpoint
    assert set(metrics["modules"]) == set(counted) and len(counted) == 7 * 7
    for name, zeros in counted.items():
        assert metrics["modules"][name] == zeros / weights[f"model.{name}.weight"].numel()
    assert metrics["zeros"] == sum(counted.values())
    assert metrics["sparsity"] == pytest.approx(1 / 8, abs=1e-4)
    assert metrics["pattern"] == "1:8"
    assert AutoModelForCausalLM.from_pretrained(work / "models" / "width").config.num_hidden_layers == 8


def test_stage_disabled_copies_the_depth_model(tmp_path, tiny_dir, prose, monkeypatch):
    work = stage_dir(tmp_path, tiny_dir, prose, monkeypatch, enabled=False)
    run_stage()
    src, out = work / "models" / "depth", work / "models" / "width"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir())
    assert all((out / p.name).read_bytes() == p.read_bytes() for p in src.iterdir())
    metrics = json.loads((work / "metrics" / "width.json").read_text())
    assert metrics == hardware.stamped({"enabled": False, "copied_from": "models/depth", "bytes": models.dir_bytes(src)})


@pytest.mark.parametrize(
    "params, name",
    [
        ({"pattern": "4:4"}, "wanda.pattern"),
        ({"pattern": "5:4"}, "wanda.pattern"),
        ({"pattern": "-1:4"}, "wanda.pattern"),
        ({"pattern": "2-4"}, "wanda.pattern"),
        ({"pattern": 68}, "wanda.pattern"),  # YAML 1.1 reads an unquoted 1:8 as 68
        ({"pattern": "3:6"}, "wanda.pattern"),  # 6 divides no row length (64, 128) of the tiny model
        ({"pattern": "unstructured:1.0"}, "wanda.pattern"),
        ({"pattern": "unstructured:-0.1"}, "wanda.pattern"),
        ({"pattern": "unstructured"}, "wanda.pattern"),  # the share is part of the pattern now
        ({"pattern": "unstructured:0.01"}, "wanda.pattern"),  # prunes no weight of a row of 64 or 128
        ({"sparsity": 0.5}, "wanda.sparsity"),  # no longer a parameter
        ({"dense_layers": list(range(8))}, "wanda.dense_layers"),  # leaves nothing to prune
        ({"modules": ["q_proj", "w_proj"]}, "wanda.modules"),
        ({"modules": []}, "wanda.modules"),
        ({"dense_layers": [8]}, "wanda.dense_layers"),
        ({"samples": 0}, "wanda.samples"),
        ({"seq_len": 4096}, "wanda.seq_len"),  # beyond the model's 2048 positions
    ],
)
def test_bad_params_raise_naming_the_param_and_write_nothing(tmp_path, tiny_dir, prose, monkeypatch, params, name):
    work = stage_dir(tmp_path, tiny_dir, prose, monkeypatch, **params)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        run_stage()
    assert not (work / "models" / "width").exists() and not (work / "metrics").exists()
