"""Run-time layer skip / repeat: exact equivalences on the tiny model, config validation, the stage end to end,
and the thesis's finding on the real embedded model."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoTokenizer

from llmshrink import depth, explore, models
from llmshrink.calib import tokenize
from llmshrink.params import read
from llmshrink.params.evaluation import Eval
from llmshrink.params.explore import Explore
from llmshrink.perplexity import perplexity, windows

ROOT = Path(__file__).resolve().parents[1]
PARAMS = read(ROOT / "params.yaml")
STAGE_ARGS = ["models/base", "data/perplexity.json", "data/qa.jsonl", "metrics/explore_layers.csv",
              "metrics/explore_samples.json", "metrics/plots/explore_layers.png"]
N = PARAMS["model"]["tiny"]["num_hidden_layers"]  # 8
RECORDS = [{"question": "What is the capital of France?", "answer": "Paris", "aliases": ["Paris"],
            "context": "Paris is the capital and largest city of France."},
           {"question": "Who wrote Hamlet?", "answer": "Shakespeare", "aliases": ["Shakespeare"], "context": None}]


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return models.load(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def ids(tiny, prose) -> torch.Tensor:
    return tokenize(tiny[1], prose[:3000])[None, :48]


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def test_orders():
    assert explore.layer_order("b", {}, N) == list(range(N))
    assert explore.layer_order("b", None, N) == list(range(N))
    assert explore.layer_order("s", {"skip": [5, 6]}, N) == [0, 1, 2, 3, 4, 7]
    assert explore.layer_order("e", {"keep": "even"}, N) == [0, 2, 4, 6]
    assert explore.layer_order("o", {"keep": "odd", "skip": [7]}, N) == [1, 3, 5]
    assert explore.layer_order("r", {"repeat": {3: 2, "5": 3}}, N) == [0, 1, 2, 3, 3, 4, 5, 5, 5, 6, 7]
    assert explore.layer_order("k", {"keep": [0, 4, 4, 7]}, N) == [0, 4, 4, 7]
    # anchors scale with the layer count: first = 0, mid = N // 2, last = N - 1; negative indices count from the end
    assert explore.layer_order("a", {"skip": ["mid-1", "mid", "mid+1"]}, N) == [0, 1, 2, 6, 7]
    assert explore.layer_order("a", {"skip": ["last", "last-1", -3, "first", "first+1"]}, N) == [2, 3, 4]
    assert explore.layer_order("a", {"repeat": {"mid": 2, -1: 2}}, N) == [0, 1, 2, 3, 4, 4, 5, 6, 7, 7]
    assert explore.layer_order("a", {"skip": ["mid"]}, 30) == [i for i in range(30) if i != 15]
    assert explore.layer_order("a", {"keep": ["first", " mid - 2 ", "last"]}, N) == [0, 2, 7]
    assert explore.describe([0, 1, 2, 3, 3, 4, 5, 5, 5, 6, 7]) == "0-2,3x2,4,5x3,6-7"
    assert explore.describe([0, 2, 4, 6]) == "0,2,4,6"


@pytest.mark.parametrize("spec, message", [
    ({"drop": [1]}, r"explore\.configs\.bad: unknown key\(s\) \['drop'\]"),
    ({"skip": [N]}, rf"explore\.configs\.bad\.skip={N} is layer {N}, outside the model's layers \[0, {N - 1}\]"),
    ({"skip": [-N - 1]}, rf"explore\.configs\.bad\.skip={-N - 1} is layer -1, outside the model's layers"),
    ({"skip": ["last+1"]}, rf"explore\.configs\.bad\.skip='last\+1' is layer {N}, outside the model's layers"),
    ({"skip": ["middle"]}, r"explore\.configs\.bad\.skip='middle' must be a layer index or an anchor"),
    ({"skip": [1.5]}, r"explore\.configs\.bad\.skip=1\.5 must be a layer index or an anchor"),
    ({"skip": 3}, r"explore\.configs\.bad\.skip=3 must be a list"),
    ({"repeat": {3: 0}}, r"explore\.configs\.bad\.repeat\.3=0 is out of range; allowed \[1, inf\]"),
    ({"repeat": {3: 1.5}}, r"explore\.configs\.bad\.repeat\.3=1\.5 must be an integer"),
    ({"repeat": {N + 2: 2}}, rf"explore\.configs\.bad\.repeat={N + 2} is layer {N + 2}, outside the model's layers"),
    ({"repeat": {2: 2}, "skip": [2]}, r"explore\.configs\.bad\.repeat: layer\(s\) \[2\] are skipped"),
    ({"keep": "prime"}, r"explore\.configs\.bad\.keep='prime' is not allowed; choose one of \['all', 'even', 'odd'\]"),
    ({"skip": list(range(N))}, r"explore\.configs\.bad keeps no layer"),
    ([1, 2], r"explore\.configs\.bad=\[1, 2\] must be a mapping"),
])
def test_invalid_configs_name_the_config(spec, message):
    p = Explore(**{**PARAMS["explore"], "configs": {"base": {}, "bad": spec}})
    with pytest.raises(ValueError, match=message):
        explore.orders(p, N)


@pytest.mark.parametrize("key, value, message", [
    ("sample_tokens", 0, r"explore\.sample_tokens=0 is out of range"),
    ("sample_prompt", "", r"explore\.sample_prompt=''"),
    ("configs", {}, r"explore\.configs=\{\} must be a non-empty mapping"),
])
def test_invalid_params_name_the_parameter(key, value, message):
    with pytest.raises(ValueError, match=message):
        Explore(**{**PARAMS["explore"], key: value})


def test_empty_config_reproduces_base_logits_exactly(tiny, ids):
    model = tiny[0]
    base = logits(model, ids)
    with depth.layers_kept(model, explore.layer_order("base", {}, N)):
        assert torch.equal(logits(model, ids), base)


def test_skip_equals_depth_pruned_model(tiny_dir, tiny, ids):
    model = tiny[0]
    base = logits(model, ids)
    pruned = models.load(tiny_dir)
    depth.prune(pruned, [2, 5])
    assert len(depth.decoder_layers(pruned)) == N - 2
    with depth.layers_kept(model, explore.layer_order("skip", {"skip": [2, 5]}, N)):
        skipped = logits(model, ids)
    assert torch.equal(skipped, logits(pruned, ids))
    assert not torch.allclose(skipped, base, atol=1e-3)
    assert torch.equal(logits(model, ids), base)  # restored on exit


def test_repeat_generates_the_same_with_and_without_cache(tiny, ids):
    model, tokenizer = tiny
    prompt = ids[:, :16]
    order = explore.layer_order("rep", {"repeat": {3: 2, 6: 3}}, N)
    base = logits(model, prompt)
    kwargs = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id,
                  output_logits=True, return_dict_in_generate=True)
    with depth.layers_kept(model, order), torch.no_grad():
        assert len(depth.decoder_layers(model)) == model.config.num_hidden_layers == N + 3
        idx = [layer.self_attn.layer_idx for layer in depth.decoder_layers(model)]
        assert idx == list(range(N + 3))
        assert not torch.allclose(logits(model, prompt), base, atol=1e-3)
        cached = model.generate(prompt, use_cache=True, **kwargs)
        plain = model.generate(prompt, use_cache=False, **kwargs)
        assert len(cached.past_key_values) == N + 3
    assert cached.sequences.shape[1] == 16 + 12
    assert torch.equal(cached.sequences, plain.sequences)
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(plain.logits), atol=1e-4, rtol=1e-4)
    assert model.config.num_hidden_layers == N and torch.equal(logits(model, prompt), base)


def test_explore_scores_every_config(tiny, prose):
    model, tokenizer = tiny
    e = Eval(**{**PARAMS["eval"], "seq_len": 64, "max_windows": 3, "limit": 2, "max_new_tokens": 4,
                       "batch_size": 2})
    orders = explore.orders(Explore(**{**PARAMS["explore"], "configs": {"base": {}, "even": {"keep": "even"}}}), N)
    rows, samples = explore.explore(model, tokenizer, orders, prose[:20000], RECORDS, e, "The capital of France is", 5)
    chunks = windows(tokenize(tokenizer, prose[:20000]), 64, 3)
    assert rows[0]["ppl"] == pytest.approx(perplexity(model, chunks, 2)[0], rel=1e-6)
    with depth.layers_kept(model, [0, 2, 4, 6]):
        assert rows[1]["ppl"] == pytest.approx(perplexity(model, chunks, 2)[0], rel=1e-6)
    assert [r["config"] for r in rows] == ["base", "even"] and [r["layers"] for r in rows] == [N, N // 2]
    assert all(0 <= r["exact_match"] <= r["match"] <= 1 and list(r) == list(explore.COLUMNS) for r in rows)
    assert not {"seconds", "ppl_seconds", "ppl_tok_s"} & set(explore.COLUMNS)  # no timings: a pure function of its inputs
    assert samples["configs"]["even"]["order"] == "0,2,4,6" and isinstance(samples["configs"]["base"]["sample"], str)


def stage_dir(tmp_path: Path, tiny_dir: Path, prose: str, configs: dict) -> Path:
    shutil.copytree(tiny_dir, tmp_path / "models" / "base")
    (tmp_path / "data").mkdir()
    texts = {"prose": {"domain": "in", "dataset": "pydoc", "text": prose[:20000]},
             "other": {"domain": "out", "dataset": "pydoc, later", "text": prose[-20000:]}}
    (tmp_path / "data" / "perplexity.json").write_text(json.dumps(texts))
    (tmp_path / "data" / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    p = {"eval": {**PARAMS["eval"], "seq_len": 64, "max_windows": 2, "limit": 2, "max_new_tokens": 4},
         "explore": {**PARAMS["explore"], "sample_tokens": 6, "configs": configs}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return tmp_path


def run_stage(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "stages" / "explore_layers.py"), *STAGE_ARGS], cwd=cwd,
                          capture_output=True, text=True)


def test_stage_end_to_end(tiny_dir, tmp_path, prose):
    cwd = stage_dir(tmp_path, tiny_dir, prose, {"base": {}, "skip": {"skip": [5, "last-1"]}, "repeat": {"repeat": {"mid": 2}}})
    done = run_stage(cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(cwd / "metrics" / "explore_layers.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(explore.COLUMNS)
    assert [(r["config"], int(r["layers"]), r["order"]) for r in rows] == \
        [("base", 8, "0-7"), ("skip", 6, "0-4,7"), ("repeat", 9, "0-3,4x2,5-7")]
    assert all(float(r["ppl"]) > 1 and 0 <= float(r["exact_match"]) <= 1 for r in rows)
    samples = json.loads((cwd / "metrics" / "explore_samples.json").read_text())
    assert samples["prompt"] == PARAMS["explore"]["sample_prompt"] and set(samples["configs"]) == {"base", "skip", "repeat"}
    assert (cwd / "metrics" / "plots" / "explore_layers.png").read_bytes()[:4] == b"\x89PNG"


def test_stage_refuses_bad_config_before_writing(tiny_dir, tmp_path, prose):
    cwd = stage_dir(tmp_path, tiny_dir, prose, {"base": {}, "too_deep": {"skip": [8]}})
    done = run_stage(cwd)
    assert done.returncode != 0 and "explore.configs.too_deep.skip=8 is layer 8, outside the model's layers" in done.stderr
    assert not (cwd / "metrics").exists()


@pytest.mark.slow
def test_embedded_middle_changes_cost_little_early_ones_break_the_model(embedded_dir, shared_data):
    """On SmolLM2-135M (WikiText-2, 2 x 512 tokens): skipping three middle layers or running layer 14 twice
    at most triples perplexity; dropping layers 1-2 or keeping only the even layers breaks the model.
    The configurations are those of params.yaml, whose anchors give the thesis's layers on its 30 layers."""
    model, tokenizer = models.load(embedded_dir), AutoTokenizer.from_pretrained(embedded_dir)
    rows = json.loads((shared_data / "wikitext2" / "test_rows.json").read_text())
    chunks = windows(tokenize(tokenizer, "\n\n".join(rows)), 512, 2)
    names = ("base", "skip_mid_3", "repeat_mid", "skip_early_2", "even_only")
    configs = {name: PARAMS["explore"]["configs"][name] for name in names}
    orders = explore.orders(Explore(**{**PARAMS["explore"], "configs": configs}), 30)
    assert orders["skip_mid_3"] == [i for i in range(30) if i not in (14, 15, 16)]
    assert orders["repeat_mid"] == [*range(15), 14, *range(15, 30)]
    ppl = {}
    for name, order in orders.items():
        with depth.layers_kept(model, order):
            ppl[name] = perplexity(model, chunks, 4, progress=False)[0]
    assert ppl["base"] < min(ppl["skip_mid_3"], ppl["repeat_mid"])
    assert max(ppl["skip_mid_3"], ppl["repeat_mid"]) < 3 * ppl["base"]
    assert min(ppl["skip_early_2"], ppl["even_only"]) > 100 * ppl["base"]
