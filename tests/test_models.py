"""prepare_model: the tiny, embedded, local and hub sources, the architecture check, atomic output."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPT2Config

from llmshrink import canonical, family, models, sources
from llmshrink.params import read

ROOT = Path(__file__).resolve().parents[1]
MODEL = read(ROOT / "params.yaml")["model"]


def run_stage(tmp_path: Path, model: dict) -> subprocess.CompletedProcess:
    """Run stages/prepare_model.py in `tmp_path` with the repo's model section updated by `model`."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "model": {**MODEL, **model}}))
    return subprocess.run(
        [sys.executable, str(ROOT / "stages" / "prepare_model.py"), "models/base"], cwd=tmp_path,
        capture_output=True, text=True,
    )


def test_tiny_round_trip(tiny_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    fresh, tokenizer = sources.tiny_model(
        {k: getattr(model.config, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                "num_attention_heads", "num_key_value_heads")}, seed=0)
    ids = AutoTokenizer.from_pretrained(tiny_dir)("Hello world, this is a test.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, fresh.eval()(ids).logits)
    size = sum(f.stat().st_size for f in tiny_dir.glob("*.safetensors"))
    assert size < 16e6
    assert model.config.num_hidden_layers == 8


def test_tiny_is_deterministic() -> None:
    dims = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1}
    a, _ = sources.tiny_model(dims, seed=3)
    b, _ = sources.tiny_model(dims, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.slow
def test_embedded_model_knows_paris(embedded_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(embedded_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])


def test_local_source_and_missing_path(tiny_dir: Path, tmp_path: Path) -> None:
    model, _ = sources.load_local(tiny_dir)
    assert model.config.num_hidden_layers == 8
    with pytest.raises(FileNotFoundError, match="model.local_path"):
        sources.load_local(tmp_path / "nowhere")


def test_non_llama_architecture_is_refused(tmp_path: Path) -> None:
    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not supported.*LlamaForCausalLM"):
        family.check(AutoConfig.from_pretrained(tmp_path))
    with pytest.raises(ValueError, match="gpt2"):
        sources.load_local(tmp_path)


def test_hub_unreachable_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="model.hub_id"):
        sources.load_hub("meta-llama/Llama-3.2-1B-Instruct-does-not-exist", "main")


@pytest.mark.parametrize(
    "params, message",
    [
        ({"source": "nowhere", "dtype": "bfloat16"}, "model.source='nowhere'"),
        ({"source": "local", "local_path": "/nonexistent", "dtype": "bfloat16"}, "model.local_path"),
        ({"source": "tiny", "dtype": "float8"}, "model.dtype='float8'"),
        ({"source": "tiny", "tiny": {**MODEL["tiny"], "hidden_size": 0}}, "model.tiny.hidden_size=0"),
    ],
)
def test_bad_params_fail_without_output(tmp_path: Path, params: dict, message: str) -> None:
    done = run_stage(tmp_path, params)
    assert done.returncode != 0
    assert message in done.stderr
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_inspection_and_passthrough(tiny_dir: Path, tmp_path: Path) -> None:
    assert models.saved_dtype(tiny_dir) == "float32"
    assert models.quant_method(tiny_dir) is None and not models.is_quantized(tiny_dir)
    shapes = models.linear_shapes(tiny_dir)
    assert len(shapes) == 7 * 8 and shapes["layers.0.mlp.down_proj"] == (128, 64)
    bf16 = tmp_path / "bf16"
    models.save(models.load(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir), bf16, "bfloat16")
    assert models.saved_dtype(bf16) == "bfloat16"
    assert models.load(bf16, "bfloat16").dtype == torch.bfloat16
    metrics = models.passthrough(tiny_dir, tmp_path / "copy")
    assert metrics == {"enabled": False, "copied_from": str(tiny_dir), "bytes": models.dir_bytes(tiny_dir)}
    assert all((tmp_path / "copy" / f.name).read_bytes() == f.read_bytes() for f in tiny_dir.iterdir())
    with pytest.raises(FileNotFoundError, match="nowhere is not a checkpoint folder"):
        models.load(tmp_path / "nowhere")


def test_truncated_weights_fail_naming_the_checkpoint(tiny_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # what a killed copy leaves
    with pytest.raises(RuntimeError, match=r"could not load the checkpoint .*broken \(incomplete or corrupt"):
        models.load(broken)


def test_canonical_metadata_does_not_depend_on_set_order(tmp_path: Path) -> None:
    """peft writes `target_modules` (a set) in hash order and without a final newline: two runs whose sets came
    out in different orders, one of them already sorted, end up byte-identical; a temporary path is dropped."""
    import json

    texts = [json.dumps({"r": 8, "target_modules": modules, "offload_to_disk_path": f"/tmp/{i}"}, indent=2,
                        sort_keys=True) for i, modules in enumerate([["k_proj", "q_proj"], ["q_proj", "k_proj"]])]
    for i, text in enumerate(texts):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "adapter_config.json").write_text(text)
        canonical.canonicalize(tmp_path / str(i))
    first, second = ((tmp_path / str(i) / "adapter_config.json").read_bytes() for i in range(2))
    assert first == second and first.endswith(b"\n")
    assert json.loads(first) == {"r": 8, "target_modules": ["k_proj", "q_proj"]}
