"""Evaluation of one loaded checkpoint: named perplexity texts, QA, multiple choice and size, with intervals."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llmshrink import choice, kl, qa, stats, timing
from llmshrink.models import dir_bytes, quantized_modules
from llmshrink.params.evaluation import Eval
from llmshrink.perplexity import text_perplexity


def model_dtype(model: torch.nn.Module) -> str:
    """The floating-point dtype the model computes in, e.g. `bfloat16`."""
    floats = (p.dtype for p in model.parameters() if p.is_floating_point())
    return str(next(floats, torch.float32)).removeprefix("torch.")


@torch.no_grad()
def model_size(model: torch.nn.Module, path: str | Path) -> dict[str, int]:
    """Parameters in total and non-zero, checkpoint bytes on disk and the bytes of the weights in fp16.

    Every tensor counts once (tied weights too). A GPTQ linear layer counts its logical weight matrix
    (in_features x out_features, non-zeros from its dequantized weight), its bias and its EoRA factors
    (lora_A, lora_B, on the layer or its adapter); its packing buffers (qweight, qzeros, scales, g_idx)
    count only on disk.
    """
    params = nonzero = 0
    seen: set[int] = set()
    tensors: list[torch.Tensor] = []
    for m in quantized_modules(model):
        logical = m.in_features * m.out_features
        params += logical
        nonzero += int(torch.count_nonzero(m.dequantize_weight())) if hasattr(m, "dequantize_weight") else logical
        seen.update(id(t) for t in [*m.parameters(), *m.buffers()])
        owners = (m, getattr(m, "adapter", None))
        tensors += [getattr(m, "bias", None), *(getattr(o, n, None) for o in owners for n in ("lora_A", "lora_B"))]
    tensors += [p for p in model.parameters() if id(p) not in seen]
    for t in {id(t): t for t in tensors if isinstance(t, torch.Tensor)}.values():
        params, nonzero = params + t.numel(), nonzero + int(torch.count_nonzero(t))
    return {"params": params, "params_nonzero": nonzero, "disk_bytes": dir_bytes(path), "weight_bytes_fp16": 2 * params}


def evaluate(model: torch.nn.Module, tokenizer: Any, path: str | Path, texts: dict[str, dict[str, str]],
             records: list[dict[str, Any]], tasks: dict[str, dict[str, Any]], p: Eval, seed: int = 0,
             reference: tuple[dict[str, torch.Tensor], str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every quality metric of one loaded checkpoint, each with its 95% bootstrap interval, and the per-item
    results they come from (for paired comparisons in the report): perplexity of each named text, KL divergence
    to the base on the text of `reference` (`kl.load_reference`), QA exact match / match, multiple-choice
    acc / acc_norm, and size."""
    # before any forward pass: GPTQModel's CPU kernel repacks its weights on the first one (no dequantizing after)
    metrics: dict[str, Any] = {"size": model_size(model, path), "dtype": model_dtype(model),
                               "gptq_kernel": getattr(model, "gptq_kernel", None)}
    items: dict[str, Any] = {"perplexity": {}, "choice": {}}
    metrics["perplexity"] = {}
    divergence = kl.WindowKL(reference[0]) if reference else None
    for name, t in texts.items():
        also = divergence if reference and reference[1] == name else None
        with timing.part(f"evaluate/perplexity/{name}"):
            r = text_perplexity(model, tokenizer, t["text"], p.seq_len, p.batch_size, p.max_windows, also=also)
        nll, tokens = r.pop("window_nll"), r.pop("window_tokens")
        metrics["perplexity"][name] = {**r, "ci95": stats.ppl_ci(nll, tokens, seed=seed), "domain": t["domain"],
                                       "dataset": t["dataset"]}
        items["perplexity"][name] = {"nll": nll, "tokens": tokens}
        if also:
            if tokens != reference[0]["window_tokens"].tolist():
                raise ValueError(f"the {name} windows differ from the reference's: rerun the reference stage")
            metrics["kl"] = {name: {"mean": sum(also.sums) / sum(tokens), "ci95": stats.ratio_ci(also.sums, tokens, seed=seed),
                                    "tokens": sum(tokens), "top_k": reference[0]["indices"].shape[-1],
                                    "dataset": t["dataset"]}}
            items["kl"] = {name: {"kl": also.sums, "tokens": tokens}}
    with timing.part("evaluate/qa"):
        trivia = qa.triviaqa(model, tokenizer, records, p.max_new_tokens, p.batch_size, p.chat_template, p.limit)
    items["qa"] = trivia.pop("items")
    metrics["qa"] = {**trivia, "ci95": stats.mean_ci(items["qa"]["exact_match"], seed=seed),
                     "match_ci95": stats.mean_ci(items["qa"]["match"], seed=seed)}
    if items["qa"]["open_exact_match"]:
        metrics["qa"]["open_ci95"] = stats.mean_ci(items["qa"]["open_exact_match"], seed=seed)
    with timing.part("evaluate/choice"):
        scored = {task: (results, _chance(tasks[task]["items"]), tasks[task]["dataset"]) for task, results in
                  choice.score(model, tokenizer, {k: t["items"] for k, t in tasks.items()}, p.batch_size).items()}
    if p.choice_tasks:
        stock = choice.score_stock(model, tokenizer, list(p.choice_tasks), p.batch_size)
        scored |= {task: (results, chance, f"lm-eval task {task} (hub)") for task, (results, chance) in stock.items()}
    metrics["choice"] = {}
    for task, (results, chance, dataset) in scored.items():
        acc, acc_norm = [r["acc"] for r in results], [r["acc_norm"] for r in results]
        metrics["choice"][task] = {"acc": sum(acc) / len(acc), "acc_norm": sum(acc_norm) / len(acc_norm),
                                   "ci95": stats.mean_ci(acc, seed=seed), "acc_norm_ci95": stats.mean_ci(acc_norm, seed=seed),
                                   "n": len(acc), "chance": chance, "dataset": dataset}
        items["choice"][task] = {"acc": acc, "acc_norm": acc_norm}
    return metrics, items


def _chance(items: list[dict[str, Any]]) -> float:
    """Expected accuracy of guessing uniformly."""
    return sum(1 / len(i["choices"]) for i in items) / len(items)
