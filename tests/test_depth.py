"""Depth pruning: layer scores, the pruned checkpoint, and the stages' parameter checks (tiny model)."""
from __future__ import annotations

import json
import os
import runpy
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from llmshrink import depth, models, sources
from llmshrink.params import read
from llmshrink.perplexity import perplexity

ROOT = Path(__file__).resolve().parents[1]
TINY_DIMS = read(ROOT / "params.yaml")["model"]["tiny"]
ARGS = {  # the paths of dvc.yaml
    "score_layers": ["models/base", "data/calibration.txt", "metrics/layer_scores.json"],
    "depth_prune": ["models/base", "metrics/layer_scores.json", "models/depth", "metrics/depth.json"],
}
IDENTITY = 5  # the layer made an identity in the ranking test
PRUNE = {"criterion": "block_influence", "samples": 4, "seq_len": 64, "layers": 3, "protect_first": 1, "protect_last": 1}


class Skip(torch.nn.Module):
    """Stands in for a decoder layer and returns its input unchanged."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


def make_workdir(path: Path, tiny_dir: Path, prose: str, **prune) -> Path:
    """A pipeline folder: params.yaml, models/base = the tiny model (float32), calibration text."""
    params = read(ROOT / "params.yaml")
    params["prune"].update({**PRUNE, **prune})
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    (path / "models").mkdir()
    (path / "models" / "base").symlink_to(tiny_dir)
    (path / "data").mkdir()
    (path / "data" / "calibration.txt").write_text(prose, encoding="utf-8")
    return path


def run_stage(name: str, workdir: Path) -> None:
    """Run stages/<name>.py's main with the arguments of dvc.yaml from `workdir`."""
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        runpy.run_path(str(ROOT / "stages" / f"{name}.py"))["main"](ARGS[name])
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path, prose: str) -> Path:
    """A workdir after score_layers and depth_prune removed 3 of the tiny model's 8 layers."""
    workdir = make_workdir(tmp_path_factory.mktemp("depth"), tiny_dir, prose)
    run_stage("score_layers", workdir)
    run_stage("depth_prune", workdir)
    return workdir


@pytest.fixture(scope="module")
def identity_model() -> tuple[torch.nn.Module, torch.Tensor]:
    """A tiny model whose layers all matter (weights scaled up) except IDENTITY (o_proj, down_proj zeroed),
    and text sampled from it: on the model's own samples the full model has the lowest expected
    perplexity (Gibbs' inequality), so removing any layer that changes the function raises it."""
    model, tokenizer = sources.tiny_model(TINY_DIMS, seed=0)
    model.eval()
    layers = depth.decoder_layers(model)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(20)
        for layer in layers:
            for w in layer.parameters():
                if w.ndim == 2:
                    w.mul_(10)
        layers[IDENTITY].self_attn.o_proj.weight.zero_()
        layers[IDENTITY].mlp.down_proj.weight.zero_()
        torch.manual_seed(0)
        start = torch.full((4, 1), tokenizer.bos_token_id)
        text = model.generate(start, attention_mask=torch.ones_like(start), do_sample=True, top_k=0, top_p=1.0,
                              max_new_tokens=63, min_new_tokens=63, pad_token_id=tokenizer.pad_token_id)
    return model, text


@pytest.mark.parametrize("criterion", depth.CRITERIA)
def test_identity_layer_ranked_least_important(identity_model, criterion: str) -> None:
    model, text = identity_model
    before = model(text).logits
    scores = depth.score_layers(model, text, criterion)
    assert [s["layer"] for s in scores] == list(range(TINY_DIMS["num_hidden_layers"]))
    assert depth.layers_to_remove(scores, 1, protect_first=1, protect_last=1) == [IDENTITY]
    assert min(scores, key=lambda s: s["score"])["layer"] == IDENTITY
    identity = scores[IDENTITY]["score"]
    if criterion == "ppl":  # removing an identity layer leaves the perplexity exactly as it was
        assert identity == pytest.approx(perplexity(model, list(text), 4, progress=False)[0], rel=1e-5)
    if criterion in ("taylor", "block_influence"):
        assert identity == pytest.approx(0.0, abs=1e-6)
    # scoring leaves the model as it was
    assert [layer.self_attn.layer_idx for layer in depth.decoder_layers(model)] == list(range(8))
    assert model.config.num_hidden_layers == 8
    torch.testing.assert_close(model(text).logits, before, rtol=0, atol=0)


def test_taylor_sums_absolute_terms_that_cancel_in_the_signed_sum() -> None:
    """Layer 3 keeps only two MLP neurons with equal input weights and opposite output weights (attention off):
    their terms w * dL/dw come in pairs +a, -a, so the signed sum |sum w * dL/dw| (the former formula) is ~0,
    while Taylor+ sums |w * dL/dw| per weight and sees them."""
    model, _ = sources.tiny_model(TINY_DIMS, seed=0)
    layer = depth.decoder_layers(model)[3]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        mlp = layer.mlp
        mlp.down_proj.weight[:, 2:] = 0
        mlp.down_proj.weight[:, 1] = -mlp.down_proj.weight[:, 0]
        mlp.gate_proj.weight[1] = mlp.gate_proj.weight[0]
        mlp.up_proj.weight[1] = mlp.up_proj.weight[0]
    text = torch.randint(0, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    score = depth.score_layers(model, text, "taylor")[3]["score"]
    model(text, labels=text).loss.backward()  # the same loss: mean NLL over all predicted tokens
    weights = depth._weights(layer)
    assert len(weights) == len(list(layer.parameters())) == 9  # 7 matrices and the 2 RMSNorm weights
    signed = sum((w * w.grad).sum() for w in weights).abs().item()
    assert score == pytest.approx(sum((w * w.grad).abs().sum().item() for w in weights), rel=1e-4)
    assert score > 0 and signed < 1e-6 * score


def test_removes_lowest_unprotected_and_records_them(pruned: Path) -> None:
    scores = json.loads((pruned / "metrics" / "layer_scores.json").read_text())
    record = json.loads((pruned / "metrics" / "depth.json").read_text())
    unprotected = sorted(scores[1:7], key=lambda s: s["score"])
    expected = sorted(s["layer"] for s in unprotected[:3])
    assert record["criterion"] == "block_influence"
    assert record["removed"] == expected
    assert record["kept"] == [i for i in range(8) if i not in expected]
    assert (record["layers_before"], record["layers_after"]) == (8, 5)
    config = json.loads((pruned / "models" / "depth" / "config.json").read_text())
    assert config["num_hidden_layers"] == 5 and config["removed_layers"] == expected


def test_pruned_logits_equal_original_with_layers_skipped(pruned: Path, tiny_dir: Path, prose: str) -> None:
    removed = json.loads((pruned / "metrics" / "depth.json").read_text())["removed"]
    small = models.load(pruned / "models" / "depth")
    reference = models.load(tiny_dir)
    for i in removed:
        reference.model.layers[i] = Skip()
    ids = torch.randint(0, small.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(small(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)
        unpruned = models.load(tiny_dir)(ids).logits
    assert (small(ids).logits - unpruned).abs().max() > 1e-3  # the skipped layers did matter


def test_parameter_count_drops_by_removed_layers(pruned: Path, tiny_dir: Path) -> None:
    record = json.loads((pruned / "metrics" / "depth.json").read_text())
    original = models.load(tiny_dir)
    removed_params = sum(p.numel() for i in record["removed"] for p in original.model.layers[i].parameters())
    assert record["params_before"] == depth.n_params(original)
    assert record["params_before"] - record["params_after"] == removed_params
    assert depth.n_params(models.load(pruned / "models" / "depth")) == record["params_after"]


def test_generate_with_cache_on_reloaded_checkpoint(pruned: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(pruned / "models" / "depth").eval()
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(5))
    prompt = torch.tensor([[1, 504, 3458, 282, 4649, 314]])
    kwargs = {"attention_mask": torch.ones_like(prompt), "max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    cached = model.generate(prompt, use_cache=True, **kwargs)
    uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape[1] == prompt.shape[1] + 12
    assert torch.equal(cached, uncached)


def test_layers_kept_repeats_layers_and_restores(tiny_dir: Path) -> None:
    model = models.load(tiny_dir)
    prompt = torch.tensor([[1, 504, 3458, 282]])
    kwargs = {"attention_mask": torch.ones_like(prompt), "max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    before = model(prompt).logits
    with depth.layers_kept(model, [0, 1, 2, 2, 3, 7]) as repeated:
        layers = depth.decoder_layers(repeated)
        assert [layer.self_attn.layer_idx for layer in layers] == list(range(6))
        assert layers[2] is not layers[3]
        torch.testing.assert_close(layers[2].mlp.up_proj.weight, layers[3].mlp.up_proj.weight)
        assert torch.equal(repeated.generate(prompt, use_cache=True, **kwargs), repeated.generate(prompt, use_cache=False, **kwargs))
    assert model.config.num_hidden_layers == 8 and len(depth.decoder_layers(model)) == 8
    torch.testing.assert_close(model(prompt).logits, before, rtol=0, atol=0)


def test_zero_layers_passes_model_through(tmp_path: Path, tiny_dir: Path, prose: str) -> None:
    workdir = make_workdir(tmp_path, tiny_dir, prose, criterion="magnitude", layers=0)
    run_stage("score_layers", workdir)
    run_stage("depth_prune", workdir)
    record = json.loads((workdir / "metrics" / "depth.json").read_text())
    assert record["removed"] == [] and record["params_after"] == record["params_before"]
    ids = torch.arange(100, 140).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(models.load(workdir / "models" / "depth")(ids).logits, models.load(tiny_dir)(ids).logits)


@pytest.mark.parametrize(
    ("stage", "override", "message"),
    [
        ("depth_prune", {"layers": 7}, r"prune\.layers=7 is out of range; allowed \[0, 6\]"),
        ("depth_prune", {"layers": -1}, r"prune\.layers=-1 is out of range"),
        ("depth_prune", {"protect_first": -1}, r"prune\.protect_first=-1"),
        ("depth_prune", {"protect_last": 9}, r"prune\.protect_last=9 is out of range; allowed \[0, 8\]"),
        ("depth_prune", {"protect_first": 7, "protect_last": 2},
         r"prune\.protect_first=7 \+ prune\.protect_last=2 protect more than the model's 8 layers"),
        ("depth_prune", {"layers": 1.5}, r"prune\.layers=1\.5 must be an integer"),
        ("depth_prune", {"criterion": "random"}, r"prune\.criterion='random'.*'ppl', 'taylor', 'magnitude', 'block_influence'"),
        ("score_layers", {"criterion": "random"}, r"prune\.criterion='random'.*'ppl'"),
        ("score_layers", {"samples": 0}, r"prune\.samples=0"),
    ],
)
def test_bad_params_raise_and_write_nothing(tmp_path: Path, tiny_dir: Path, prose: str, stage: str, override: dict, message: str) -> None:
    workdir = make_workdir(tmp_path, tiny_dir, prose, **override)
    scores = [{"layer": i, "score": float(i)} for i in range(8)]
    if stage == "depth_prune":
        (workdir / "metrics").mkdir()
        (workdir / "metrics" / "layer_scores.json").write_text(json.dumps(scores))
    with pytest.raises(ValueError, match=message):
        run_stage(stage, workdir)
    assert sorted(p.name for p in (workdir / "models").iterdir()) == ["base"]
    assert not (workdir / "metrics" / "depth.json").exists()
    assert (workdir / "metrics" / "layer_scores.json").exists() == (stage == "depth_prune")


def test_per_layer_config_lists_follow(tmp_path: Path) -> None:
    """A Qwen2 config with sliding-window layers: `layer_types` keeps the kept layers' entries."""
    config = Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
                         num_key_value_heads=1, use_sliding_window=True, sliding_window=4, max_window_layers=2)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    assert model.config.layer_types == ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]
    depth.keep_layers(model, [0, 3])
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.layer_types == ["full_attention", "sliding_attention"]
    assert reloaded.config.num_hidden_layers == 2
    prompt = torch.tensor([[5, 17, 42, 9, 77, 3]])
    kwargs = {"attention_mask": torch.ones_like(prompt), "max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(reloaded.generate(prompt, use_cache=True, **kwargs), reloaded.generate(prompt, use_cache=False, **kwargs))
