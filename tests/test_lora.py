"""LoRA healing: the loss falls, the merge equals the adapter, sparsity survives, determinism, bad params."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmshrink import hardware, lora, models, sources
from llmshrink.data import qa_record
from llmshrink.params import read
from llmshrink.params.lora import Lora

ROOT = Path(__file__).resolve().parents[1]
PARAMS = read(ROOT / "params.yaml")
SEED = PARAMS["seed"]
STAGE_ARGS = ["models/width", "data/finetune.txt", "data/qa_train.jsonl", "models/base", "models/lora",
              "metrics/lora.json", "metrics/lora_loss.csv"]
FAST = {"steps": 15, "batch_size": 4, "seq_len": 32, "lr": 1e-2}
FACTS = [("What is the capital of France?", "Paris"), ("Who wrote Hamlet?", "William Shakespeare"),
         ("What is the chemical symbol for gold?", "Au"), ("How many legs does a spider have?", "Eight")]
TEXT = " ".join(f"{q} {a}." for q, a in FACTS) * 100  # repetitive, so a few steps visibly lower the loss


def lora_section(**overrides: object) -> dict:
    """The lora params section as written to params.yaml."""
    return {**PARAMS["lora"], **FAST, **overrides}


def lora_params(**overrides: object) -> Lora:
    return Lora(**lora_section(**overrides))


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model (weights at std 0.1, so its logits can move) with 1 of every 8 consecutive inputs
    of each projection row zeroed (lowest |w|)."""
    model, tokenizer = sources.tiny_model({**PARAMS["model"]["tiny"], "initializer_range": 0.1}, seed=0)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) and name != "lm_head":
                groups = m.weight.view(m.weight.shape[0], -1, 8)
                groups.scatter_(-1, groups.abs().argmin(-1, keepdim=True), 0.0)
    path = tmp_path_factory.mktemp("pruned")
    models.save(model, tokenizer, path, "float32")
    return path


def run_stage(workdir: Path, pruned_dir: Path, **overrides: object) -> None:
    """Run stages/lora.py's main in `workdir` laid out as the repo (params.yaml, models/width = `pruned_dir`,
    data/) with the paths of dvc.yaml."""
    (workdir / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "lora": lora_section(**overrides)}))
    (workdir / "models").mkdir(exist_ok=True)
    if not (workdir / "models" / "width").exists():
        (workdir / "models" / "width").symlink_to(pruned_dir)
    (workdir / "data").mkdir(exist_ok=True)
    (workdir / "data" / "finetune.txt").write_text(TEXT)
    lines = (json.dumps(qa_record(q, a, [])) for q, a in FACTS)
    (workdir / "data" / "qa_train.jsonl").write_text("\n".join(lines) + "\n")
    spec = importlib.util.spec_from_file_location("stage_lora", ROOT / "stages" / "lora.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    stage.main(STAGE_ARGS)


@pytest.fixture(scope="module")
def dense_run(pruned_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stage run without keep_sparsity, saved in float32."""
    workdir = tmp_path_factory.mktemp("dense")
    mp = pytest.MonkeyPatch()
    mp.chdir(workdir)
    try:
        run_stage(workdir, pruned_dir, keep_sparsity=False)
    finally:
        mp.undo()
    return workdir


def target_zeros(path: Path) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(path)
    return {k: w == 0 for k, w in lora.target_weights(model, PARAMS["lora"]["targets"]).items()}


@pytest.fixture(scope="module")
def pruned_bf16_dir(pruned_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pruned_dir` saved in bfloat16 (as the pipeline's checkpoints are)."""
    path = tmp_path_factory.mktemp("pruned_bf16")
    models.save(models.load(pruned_dir), AutoTokenizer.from_pretrained(pruned_dir), path, "bfloat16")
    return path


@pytest.mark.parametrize("dataset", ["wikitext", "triviaqa"])
def test_training_lowers_loss(pruned_dir: Path, tmp_path: Path, dataset: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(pruned_dir)
    (tmp_path / "finetune.txt").write_text(TEXT)
    (tmp_path / "qa_train.jsonl").write_text("".join(json.dumps(qa_record(q, a, [])) + "\n" for q, a in FACTS))
    p = lora_params(dataset=dataset)
    batches = lora.training_batches(tokenizer, tmp_path / "finetune.txt", tmp_path / "qa_train.jsonl", p, SEED)
    healed = lora.heal(models.load(pruned_dir), batches, p, SEED, tmp_path / "adapter", progress=False)
    losses = healed.losses
    assert len(losses) == p.steps
    assert sum(losses[-3:]) / 3 < losses[0] - 0.5, losses


def test_merged_equals_adapter(dense_run: Path, pruned_dir: Path) -> None:
    out = dense_run / "models" / "lora"
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    # the adapter sub-folder is not picked up: a plain LLaMA without LoRA layers
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert not getattr(merged, "_hf_peft_config_loaded", False)
    assert not any("lora" in name for name, _ in merged.named_modules())
    adapted = PeftModel.from_pretrained(models.load(pruned_dir), out / "adapter").eval()
    base = models.load(pruned_dir)
    ids = AutoTokenizer.from_pretrained(out)("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    with torch.no_grad():
        m, a, b = merged(ids).logits, adapted(ids).logits, base(ids).logits
    assert torch.allclose(m, a, atol=1e-4, rtol=1e-4), (m - a).abs().max()
    assert (m - b).abs().max() > 1e-2  # the adapter did change the model
    metrics = json.loads((dense_run / "metrics" / "lora.json").read_text())
    assert metrics["sparsity_before"] > 0.12 and metrics["sparsity_after"] < 0.01  # the merge filled the zeros
    csv = (dense_run / "metrics" / "lora_loss.csv").read_text().splitlines()
    assert csv[0] == "step,loss" and len(csv) == 1 + FAST["steps"]


def test_keep_sparsity(pruned_dir: Path, pruned_bf16_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_stage(tmp_path, pruned_bf16_dir, keep_sparsity=True)
    assert models.saved_dtype(tmp_path / "models" / "lora") == "bfloat16"  # the dtype of its input checkpoint
    before, after = target_zeros(pruned_dir), target_zeros(tmp_path / "models" / "lora")
    assert all(after[k][z].all() for k, z in before.items())  # every pruned position is still exactly zero
    assert sum(int(z.sum()) for z in after.values()) == sum(int(z.sum()) for z in before.values())
    metrics = json.loads((tmp_path / "metrics" / "lora.json").read_text())
    assert metrics["sparsity_after"] == pytest.approx(metrics["sparsity_before"]) and metrics["sparsity_before"] > 0.12
    assert metrics["first_loss"] > metrics["last_loss"] and metrics["device"] == "cpu" and metrics["enabled"]


def test_deterministic(pruned_dir: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(pruned_dir)
    p = lora_params(steps=5)
    runs = [
        lora.heal(models.load(pruned_dir), lora.text_batches(tokenizer, TEXT, p, SEED), p, SEED, tmp_path / str(i),
                  progress=False)
        for i in range(2)
    ]
    assert runs[0].losses == runs[1].losses
    for (k, w0), w1 in zip(runs[0].model.state_dict().items(), runs[1].model.state_dict().values()):
        assert torch.equal(w0, w1), k


def test_disabled_copies(pruned_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_stage(tmp_path, pruned_dir, enabled=False)
    for f in pruned_dir.iterdir():
        assert (tmp_path / "models" / "lora" / f.name).read_bytes() == f.read_bytes()
    assert json.loads((tmp_path / "metrics" / "lora.json").read_text()) == hardware.stamped({
        "enabled": False, "copied_from": "models/width", "bytes": models.dir_bytes(pruned_dir)})
    assert (tmp_path / "metrics" / "lora_loss.csv").read_text() == "step,loss\n"


@pytest.mark.parametrize("name, value", [
    ("dataset", "c4"), ("rank", 0), ("dropout", 1.0), ("dropout", -0.1), ("steps", 0), ("targets", ["nope_proj"]),
    ("seed", 0),  # the top-level `seed` is the only seed
])
def test_bad_params(pruned_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    name: str, value: object) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=f"lora.{name}"):
        run_stage(tmp_path, pruned_dir, **{name: value})
    assert not (tmp_path / "metrics").exists()
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["width"]
