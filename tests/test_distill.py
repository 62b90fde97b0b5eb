"""Distillation healing: the loss is 0 when the student is the teacher, equals KL at temperature T times T² computed
here, falls in a short run (LoRA and full fine-tuning) on a structurally pruned tiny student, and full fine-tuning
keeps the pruning zeros."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from llmshrink import lora, sources, structured
from llmshrink.calib import token_windows
from llmshrink.params import read
from llmshrink.params.lora import Lora
from llmshrink.params.width import Structured

ROOT = Path(__file__).resolve().parents[1]
PARAMS = read(ROOT / "params.yaml")
DIMS = {**PARAMS["model"]["tiny"], "initializer_range": 0.1}  # logits that differ between teacher and student


def lora_params(**overrides: object) -> Lora:
    return Lora(**{**PARAMS["lora"], "steps": 10, "batch_size": 4, "seq_len": 32, "lr": 1e-2, "distill": 1.0,
                          "temperature": 2.0, **overrides})


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    return sources.tiny_model(DIMS, seed=0)[0].eval()


@pytest.fixture(scope="module")
def student(tiny_dir: Path, prose: str) -> tuple[torch.nn.Module, list[lora.Batch]]:
    """The teacher with half its MLP channels removed, and training batches of real prose."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    s = Structured(**{**PARAMS["structured"], "mlp": 0.5, "samples": 4, "seq_len": 32})
    model, _ = structured.prune(sources.tiny_model(DIMS, seed=0)[0], token_windows(tokenizer, prose, 4, 32, 0), s)
    return model, lora.text_batches(tokenizer, prose, lora_params(), 0)


def test_zero_when_student_is_teacher(teacher: torch.nn.Module, student) -> None:
    _, batches = student
    b = batches[0]
    with torch.no_grad():
        logits = teacher(b.input_ids).logits
        assert lora.distill_loss(logits, logits, b.labels, 2.0).item() == 0.0
        assert lora.batch_loss(teacher, b, lora_params(), teacher, torch.device("cpu")).item() == 0.0


def test_equals_kl_at_temperature() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    labels = torch.ones(2, 5, dtype=torch.long)
    labels[1, 3:] = lora.IGNORE  # positions 2 and 3 of row 1 predict unlabelled tokens
    pt, ps = (t[:, :-1] / 3.0).softmax(-1), (s[:, :-1] / 3.0).softmax(-1)
    kl = (pt * (pt.log() - ps.log())).sum(-1)
    keep = labels[:, 1:] != lora.IGNORE
    assert lora.distill_loss(s, t, labels, 3.0).item() == pytest.approx(9 * kl[keep].mean().item(), rel=1e-5)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_short_run_lowers_the_loss(teacher: torch.nn.Module, student, method: str, tmp_path: Path) -> None:
    model, batches = student
    model = copy.deepcopy(model)
    with torch.no_grad():  # a pruning zero, which full fine-tuning must keep with keep_sparsity
        model.model.layers[0].mlp.up_proj.weight[0, 0] = 0
    p = lora_params(method=method, lr=1e-2 if method == "lora" else 1e-3)  # the same batch each step: no noise
    healed = lora.heal(model, batches[:1] * p.steps, p, 0, tmp_path / "adapter", progress=False, teacher=teacher)
    assert healed.losses[-1] < 0.5 * healed.losses[0], healed.losses
    assert healed.metrics["method"] == method and healed.metrics["distill"] == 1.0
    assert healed.model.model.layers[0].mlp.up_proj.weight[0, 0] == 0
    assert (tmp_path / "adapter").is_dir() == (method == "lora")
    if method == "full":
        assert healed.metrics["trainable_params"] == model.num_parameters()


def test_distill_needs_a_teacher(student, tmp_path: Path) -> None:
    model, batches = student
    with pytest.raises(ValueError, match="lora.distill=1.0 needs a teacher"):
        lora.heal(copy.deepcopy(model), batches, lora_params(), 0, tmp_path, progress=False)
    with pytest.raises(ValueError, match="lora.method='adapter' is not allowed"):
        lora_params(method="adapter")
