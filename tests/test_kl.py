"""KL to base from the cached top-k reference: exactly the full KL when k is the whole vocabulary, a lower bound
(merged tail) for a small k, 0 for the base itself, and computed in the perplexity pass on its windows."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmshrink import kl, models
from llmshrink.perplexity import text_perplexity, token_ids, windows


def _kl_of(model: torch.nn.Module, tokenizer, text: str, ref: dict) -> float:
    also = kl.WindowKL(ref)
    r = text_perplexity(model, tokenizer, text, 64, 4, 4, also=also)
    assert r["window_tokens"] == ref["window_tokens"].tolist()
    return sum(also.sums) / sum(r["window_tokens"])


@torch.no_grad()
def test_topk_kl_is_exact_with_the_whole_vocabulary_and_a_lower_bound_below(tiny_dir: Path, prose: str) -> None:
    base, tokenizer = models.load(tiny_dir), models.load_tokenizer(tiny_dir)
    text = prose[-20_000:]
    noisy = models.load(tiny_dir)
    g = torch.Generator().manual_seed(0)
    for p in noisy.parameters():
        p.add_(torch.randn(p.shape, generator=g) * 0.02)
    vocab = base.config.vocab_size
    full = kl.reference(base, tokenizer, text, 64, 4, vocab, 4)
    # exact KL(base ‖ noisy) per token over the same windows
    chunks = torch.stack(windows(token_ids(tokenizer, text), 64, 4))
    p_log = torch.log_softmax(base(chunks).logits[:, :-1].float(), -1)
    q_log = torch.log_softmax(noisy(chunks).logits[:, :-1].float(), -1)
    exact = float((p_log.exp() * (p_log - q_log)).sum(-1).mean())
    assert _kl_of(noisy, tokenizer, text, full) == pytest.approx(exact, rel=1e-3)
    top8 = kl.reference(base, tokenizer, text, 64, 4, 8, 4)
    assert 0 < _kl_of(noisy, tokenizer, text, top8) <= exact * (1 + 1e-4)
    assert _kl_of(base, tokenizer, text, top8) == 0


def test_reference_round_trips_with_its_text_name(tiny_dir: Path, prose: str, tmp_path: Path) -> None:
    ref = kl.reference(models.load(tiny_dir), models.load_tokenizer(tiny_dir), prose[:20_000], 64, 2, 16, 4)
    (tmp_path / "r.safetensors").write_bytes(kl.serialize(ref, "news"))
    back, text = kl.load_reference(tmp_path / "r.safetensors")
    assert text == "news" and all(torch.equal(back[k], v) for k, v in ref.items())
    assert ref["logprobs"].shape == (2, 63, 16) and ref["indices"].dtype == torch.int32


def test_only_the_references_top_k_columns_leave_the_logits_device() -> None:
    """On a GPU the log-probabilities of a window are [positions, vocabulary]: copying them to the CPU cost 129 s
    of one 1B evaluation. Only the k gathered columns may be copied."""
    from torch.overrides import TorchFunctionMode

    positions, vocab, k = 16, 1000, 4
    g = torch.Generator().manual_seed(0)
    base = torch.log_softmax(torch.randn(1, positions, vocab, generator=g), -1).topk(k, dim=-1)
    ref = {"logprobs": base.values, "indices": base.indices.to(torch.int32), "window_tokens": torch.tensor([positions])}
    copied: list[int] = []

    class CopiesToCpu(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            if func is torch.Tensor.cpu or (func is torch.Tensor.to and "cpu" in map(str, args[1:])):
                copied.append(args[0].numel())
            return func(*args, **(kwargs or {}))

    divergence = kl.WindowKL(ref)
    with CopiesToCpu():
        divergence(0, torch.log_softmax(torch.randn(positions, vocab, generator=g), -1))
    assert divergence.sums[0] > 0
    assert copied and max(copied) <= positions * k
