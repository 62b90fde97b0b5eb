"""Structured width pruning: the smaller model loads with from_pretrained in the promised shapes, its logits equal
the original model's with the removed channels and heads masked, the removed units are the lowest-scoring ones
(scores computed here independently), and the width stage writes the new shapes into its metrics."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmshrink import family, models, sources, structured
from llmshrink.calib import token_windows
from llmshrink.params import read
from llmshrink.params.width import Structured

ROOT = Path(__file__).resolve().parents[1]
BASE = read(ROOT / "params.yaml")
DIMS = {**BASE["model"]["tiny"], "num_attention_heads": 8}  # 2 KV groups of 4 query heads, head_dim 8
SHARES = {"mlp": 0.25, "kv_groups": 0.5, "query_heads": 0.5}
STAGE_ARGS = ["models/depth", "data/calibration.txt", "models/width", "metrics/width.json"]


def settings(**overrides: object) -> Structured:
    return Structured(**{**BASE["structured"], **SHARES, "samples": 6, "seq_len": 48, **overrides})


@pytest.fixture(scope="module")
def original() -> torch.nn.Module:
    return sources.tiny_model(DIMS, seed=0)[0].eval()


@pytest.fixture(scope="module")
def calib(tiny_dir: Path, prose: str) -> torch.Tensor:
    return token_windows(AutoTokenizer.from_pretrained(tiny_dir), prose, 6, 48, seed=0)


@pytest.fixture(scope="module", params=["wanda", "activation"])
def pruned(request, original: torch.nn.Module, calib: torch.Tensor) -> tuple[str, torch.nn.Module, dict]:
    model, report = structured.prune(sources.tiny_model(DIMS, seed=0)[0], calib, settings(importance=request.param))
    return request.param, model, report


def matches(blocks: torch.Tensor, of: torch.Tensor) -> list[int]:
    """For each row of `blocks`, the index of the equal row of `of` (which units the pruned model kept)."""
    return [int((of == row).all(1).nonzero()) for row in blocks]


def kept(original: torch.nn.Module, model: torch.nn.Module, layer: int) -> dict[str, list[int]]:
    """Kept MLP channels, query heads and KV groups of `layer`, found by matching the weights."""
    a, b = family.layers(original)[layer], family.layers(model)[layer]
    d = structured.head_dim(original.config)
    heads = lambda w, n: w.reshape(n, -1)  # noqa: E731 - one row per head: its head_dim rows of the matrix
    return {"mlp": matches(b.mlp.gate_proj.weight, a.mlp.gate_proj.weight),
            "heads": matches(heads(b.self_attn.q_proj.weight, model.config.num_attention_heads),
                             heads(a.self_attn.q_proj.weight, original.config.num_attention_heads)),
            "groups": matches(heads(b.self_attn.k_proj.weight, model.config.num_key_value_heads),
                              heads(a.self_attn.k_proj.weight, original.config.num_key_value_heads)),
            "d": d}


@torch.no_grad()
def own_scores(model: torch.nn.Module, calib: torch.Tensor, layer: int, importance: str) -> dict[str, torch.Tensor]:
    """Channel, query-head and group scores of one layer from a forward pass with hooks of this test's own."""
    sums: dict[str, torch.Tensor] = {}
    lay = family.layers(model)[layer]
    mods = {"x": lay.mlp.up_proj, "z": lay.mlp.down_proj, "xa": lay.self_attn.v_proj, "y": lay.self_attn.o_proj}
    hs = [m.register_forward_pre_hook(lambda _m, a, k=k: sums.__setitem__(k, sums.get(k, 0) + a[0].double()
                                                                          .flatten(0, 1).pow(2).sum(0)))
          for k, m in mods.items()]
    model(calib)
    for h in hs:
        h.remove()
    n = {k: v.sqrt() for k, v in sums.items()}
    d, kv = structured.head_dim(model.config), model.config.num_key_value_heads
    w = {k: getattr(lay.mlp if k in ("gate", "up", "down") else lay.self_attn, f"{k}_proj").weight.double().abs()
         for k in ("gate", "up", "down", "q", "k", "v", "o")}
    if importance == "activation":
        head = torch.stack([n["y"][h * d:(h + 1) * d].norm() for h in range(model.config.num_attention_heads)])
        return {"mlp": n["z"], "heads": head, "groups": head.view(kv, -1).sum(1)}
    mlp = (w["gate"] @ n["x"]) + (w["up"] @ n["x"]) + w["down"].sum(0) * n["z"]
    head = (w["q"] @ n["xa"]).view(-1, d).sum(1) + (w["o"].sum(0) * n["y"]).view(-1, d).sum(1)
    groups = head.view(kv, -1).sum(1) + ((w["k"] + w["v"]) @ n["xa"]).view(-1, d).sum(1)
    return {"mlp": mlp, "heads": head, "groups": groups}


def test_loads_with_from_pretrained_in_the_promised_shapes(pruned, tmp_path: Path, tiny_dir: Path) -> None:
    _, model, report = pruned
    models.save(model, AutoTokenizer.from_pretrained(tiny_dir), tmp_path, "float32")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "LlamaForCausalLM"
    c = loaded.config
    assert (c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (96, 2, 1, 8)
    assert report["after"] == structured.shape(c) and report["before"]["intermediate_size"] == 128
    assert report["removed_per_layer"] == {"mlp_channels": 32, "kv_groups": 1, "query_heads_per_group": 2}
    attn, mlp = loaded.model.layers[0].self_attn, loaded.model.layers[0].mlp
    assert attn.q_proj.weight.shape == (16, 64) and attn.k_proj.weight.shape == (8, 64)
    assert attn.o_proj.weight.shape == (64, 16) and mlp.down_proj.weight.shape == (64, 96)
    assert report["params_after"] == loaded.num_parameters() < report["params_before"]
    ids = torch.arange(1, 33)[None]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_logits_equal_the_masked_original(pruned, original: torch.nn.Module, calib: torch.Tensor) -> None:
    _, model, _ = pruned
    masked = sources.tiny_model(DIMS, seed=0)[0].eval()
    with torch.no_grad():
        for i, layer in enumerate(family.layers(masked)):
            k = kept(original, model, i)
            drop = [c for c in range(128) if c not in k["mlp"]]
            layer.mlp.down_proj.weight[:, drop] = 0
            for h in set(range(8)) - set(k["heads"]):
                layer.self_attn.o_proj.weight[:, h * k["d"]:(h + 1) * k["d"]] = 0
            assert {h // 4 for h in k["heads"]} == set(k["groups"])  # kept query heads read the kept groups
        ref, out = masked(calib).logits, model(calib).logits
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4), (out - ref).abs().max()


def test_removes_the_lowest_scores(pruned, original: torch.nn.Module, calib: torch.Tensor) -> None:
    importance, model, _ = pruned
    for layer in (0, 5):
        score, k = own_scores(original, calib, layer, importance), kept(original, model, layer)
        assert k["mlp"] == sorted(score["mlp"].argsort(descending=True)[:96].tolist())
        assert k["groups"] == [int(score["groups"].argmax())]
        heads = score["heads"].view(2, 4)[k["groups"][0]]
        assert k["heads"] == sorted((k["groups"][0] * 4 + heads.argsort(descending=True)[:2]).tolist())


def test_bad_shares_fail_with_the_parameter(original: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match=r"structured.mlp=1.0 is out of range"):
        settings(mlp=1.0)
    with pytest.raises(ValueError, match="structured.importance"):
        settings(importance="taylor")
    with pytest.raises(ValueError, match=r"structured.kv_groups=0.1 removes 0 of the 2 kv_groups"):
        structured.counts(original.config, settings(kv_groups=0.1))
    with pytest.raises(ValueError, match="keep 3 query heads, which do not divide hidden_size=64"):
        structured.counts(original.config, settings(query_heads=0.25))
    assert not settings(mlp=0.0, kv_groups=0.0, query_heads=0.0).enabled


def test_stage_with_wanda_after_structured(tmp_path: Path, tiny_dir: Path, prose: str, monkeypatch) -> None:
    p = {**BASE, "wanda": {**BASE["wanda"], "samples": 6, "seq_len": 48, "pattern": "1:8"},
         "structured": {**BASE["structured"], "mlp": 0.25, "kv_groups": 0.0, "query_heads": 0.5, "samples": 6,
                        "seq_len": 48}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    models.save(models.load(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir), tmp_path / "models" / "depth", "bfloat16")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "calibration.txt").write_text(prose)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(ROOT / "stages" / "width_prune.py"))["main"](STAGE_ARGS)
    metrics = json.loads((tmp_path / "metrics" / "width.json").read_text())
    assert metrics["structured"]["after"] == {"intermediate_size": 96, "num_attention_heads": 2,
                                              "num_key_value_heads": 2, "head_dim": 16}
    assert metrics["sparsity"] == pytest.approx(1 / 8, abs=1e-4)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "models" / "width")
    assert model.config.intermediate_size == 96 and models.saved_dtype(tmp_path / "models" / "width") == "bfloat16"
    assert model.model.layers[0].self_attn.o_proj.weight.shape == (64, 32)
