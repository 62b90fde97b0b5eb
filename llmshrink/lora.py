"""Healing of a pruned model: LoRA (Hu et al. 2021) merged back into its weights, or full fine-tuning.

Each target linear layer W (frozen) gets a trainable low-rank update, h = W x + (alpha / r) * B A x with
A: r x in, B: out x r (B starts at zero); after training the update is merged, W' = W + (alpha / r) * B A.
The merge is dense, so it fills in the zeros WANDA made; with `keep_sparsity` the positions that were
exactly zero in W are zeroed again in W' (W' <- W' * M, M = [W != 0]).
Distillation (Hinton et al. 2015; Minitron's healing): with weight w the loss is (1 - w) · LM + w · T² ·
KL(p_teacher ‖ p_student), both next-token distributions at temperature T, the teacher the unpruned model run on
the same batch without gradients, averaged over the tokens that carry an LM label.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from tqdm import tqdm
from transformers import PreTrainedModel

from llmshrink import family, hardware
from llmshrink.calib import token_windows
from llmshrink.params import MODULES, choice
from llmshrink.params.lora import Lora
from llmshrink.qa import prompt, read_qa

IGNORE = -100  # label of tokens that carry no loss


@dataclass
class Batch:
    """One micro-batch: token ids, labels (IGNORE where no loss) and the attention mask, all [B, T]."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor


def check_targets(model: PreTrainedModel, targets: list[str]) -> None:
    """Raise a ValueError naming `lora.targets` if a target names no linear layer of the model."""
    present = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for t in targets:
        choice("lora.targets", t, sorted(present - {"lm_head"}))


def qa_example(record: dict[str, Any]) -> tuple[str, str]:
    """Prompt (the evaluator's closed-book `qa.prompt`) and completion of one QA record:
    "Question: ...\\nAnswer:" + " <answer>\\n"."""
    return prompt(record), f" {record['answer']}\n"


def text_batches(tokenizer: Any, text: str, p: Lora, seed: int) -> list[Batch]:
    """`steps * grad_accum` micro-batches of random `seq_len` windows of the text; loss on every token."""
    n = p.steps * p.grad_accum
    ids = token_windows(tokenizer, text, n * p.batch_size, p.seq_len, seed)
    return [Batch(w, w.clone(), torch.ones_like(w)) for w in ids.view(n, p.batch_size, p.seq_len)]


def qa_batches(tokenizer: Any, records: list[dict[str, Any]], p: Lora, seed: int) -> list[Batch]:
    """`steps * grad_accum` micro-batches of QA records drawn at random (seeded), right-padded;
    loss on the answer tokens only (the prompt is what the model is given at evaluation)."""
    if not records:
        raise ValueError("lora.dataset='triviaqa' needs QA training records, but qa_train.jsonl is empty")
    examples = []
    for r in records:
        prompt_ids, answer = (tokenizer(s, add_special_tokens=False)["input_ids"] for s in qa_example(r))
        ids = (prompt_ids + answer)[-p.seq_len :]
        labels = ([IGNORE] * len(prompt_ids) + answer)[-p.seq_len :]
        examples.append((ids, labels))
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(examples), (p.steps * p.grad_accum, p.batch_size), generator=g)
    batches = []
    for row in picks.tolist():
        chosen = [examples[i] for i in row]
        width = max(len(ids) for ids, _ in chosen)
        pad = [width - len(ids) for ids, _ in chosen]
        ids = [ids + [tokenizer.pad_token_id] * k for (ids, _), k in zip(chosen, pad)]
        labels = [lab + [IGNORE] * k for (_, lab), k in zip(chosen, pad)]
        mask = [[1] * (width - k) + [0] * k for k in pad]
        batches.append(Batch(torch.tensor(ids), torch.tensor(labels), torch.tensor(mask)))
    return batches


def training_batches(tokenizer: Any, text_path: str | Path, qa_path: str | Path, p: Lora, seed: int) -> list[Batch]:
    """The micro-batches of `lora.dataset`: fine-tuning text (`wikitext`) or QA records (`triviaqa`)."""
    if p.dataset == "wikitext":
        return text_batches(tokenizer, Path(text_path).read_text(encoding="utf-8"), p, seed)
    return qa_batches(tokenizer, read_qa(qa_path), p, seed)


def target_weights(model: torch.nn.Module, targets: list[str]) -> dict[str, torch.Tensor]:
    """The weights of the target linear layers (not LoRA's own A/B), by module name."""
    return {
        name: m.weight
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets
    }


def sparsity(weights: dict[str, torch.Tensor]) -> float:
    """Share of exactly-zero entries over all given weights."""
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    return zeros / sum(w.numel() for w in weights.values())


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)) of the next-token distributions [B, T, V], averaged
    over the positions whose next token carries a label (the positions the LM loss counts)."""
    mask = labels[:, 1:] != IGNORE
    s = F.log_softmax(student[:, :-1][mask].float() / temperature, dim=-1)
    t = F.log_softmax(teacher[:, :-1][mask].float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def batch_loss(model: torch.nn.Module, b: Batch, p: Lora, teacher: torch.nn.Module | None,
               device: torch.device) -> torch.Tensor:
    """(1 - lora.distill) · LM loss + lora.distill · distillation loss against `teacher` on one micro-batch."""
    ids, mask, labels = b.input_ids.to(device), b.attention_mask.to(device), b.labels.to(device)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    if not p.distill:
        return out.loss
    with torch.no_grad():
        target = teacher(input_ids=ids, attention_mask=mask).logits
    return (1 - p.distill) * out.loss + p.distill * distill_loss(out.logits, target, labels, p.temperature)


def train(model: torch.nn.Module, batches: list[Batch], p: Lora, seed: int, progress: bool = True,
          teacher: torch.nn.Module | None = None) -> list[float]:
    """AdamW on the trainable weights (the adapter's, or all with lora.method=full); one optimizer step per
    `grad_accum` micro-batches; distillation from `teacher` when lora.distill > 0. Returns the loss per step."""
    if p.distill and teacher is None:
        raise ValueError(f"lora.distill={p.distill} needs a teacher model (the unpruned checkpoint)")
    device = hardware.device()
    autocast = hardware.autocast_dtype(device)
    for m in (model, teacher):
        if m is not None and not getattr(m, "hf_device_map", None):  # spread over GPUs by accelerate: stays put
            m.to(device)
    model.train()
    torch.manual_seed(seed)  # LoRA dropout
    optimizer = torch.optim.AdamW([w for w in model.parameters() if w.requires_grad], lr=p.lr)
    losses = []
    bar = tqdm(range(p.steps), desc="lora", unit="step", disable=not progress)
    for step in bar:
        total = 0.0
        for b in batches[step * p.grad_accum : (step + 1) * p.grad_accum]:
            ctx = torch.autocast(device.type, dtype=autocast) if autocast else nullcontext()
            with ctx:
                loss = batch_loss(model, b, p, teacher, device)
            (loss / p.grad_accum).backward()
            total += loss.item() / p.grad_accum
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
        bar.set_postfix(loss=f"{total:.4f}")
    model.to("cpu").eval()
    if teacher is not None:
        teacher.to("cpu")
    return losses


@dataclass
class Healed:
    """The merged model, the loss per step and the run's metrics."""

    model: PreTrainedModel
    losses: list[float]
    metrics: dict[str, Any]


def heal(model: PreTrainedModel, batches: list[Batch], p: Lora, seed: int, adapter_dir: str | Path,
         progress: bool = True, teacher: PreTrainedModel | None = None) -> Healed:
    """Train on `batches` (distilling from `teacher` when lora.distill > 0): a LoRA adapter, saved to
    `adapter_dir` and merged, or (lora.method=full) every weight; with `keep_sparsity` re-zero the positions that
    were zero in the trained linear weights (the LoRA targets, or every projection)."""
    if teacher is not None and teacher.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"the teacher's vocabulary ({teacher.config.vocab_size}) differs from the model's "
                         f"({model.config.vocab_size}): distillation needs the same tokenizer")
    # the linear layers holding the named projections (Phi-3's fused qkv_proj / gate_up_proj when all are named)
    trained = family.of(model).resolve("lora", p.targets if p.method == "lora" else MODULES)
    if p.method == "lora":
        check_targets(model, trained)
    weights = target_weights(model, trained)
    masks = {name: w != 0 for name, w in weights.items()}
    before = sparsity(weights)
    device = hardware.device()
    autocast = hardware.autocast_dtype(device)
    if p.method == "lora":
        torch.manual_seed(seed)  # initialisation of A
        config = LoraConfig(
            r=p.rank, lora_alpha=p.alpha, lora_dropout=p.dropout, target_modules=trained,
            bias="none", task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    trainable = sum(w.numel() for w in model.parameters() if w.requires_grad)
    losses = train(model, batches, p, seed, progress, teacher)
    if p.method == "lora":
        model.save_pretrained(adapter_dir)
        model = model.merge_and_unload()
    weights = target_weights(model, trained)
    if p.keep_sparsity:
        with torch.no_grad():
            for name, w in weights.items():
                w.mul_(masks[name].to(w.device))
    metrics = {
        "method": p.method,
        "distill": p.distill,
        "temperature": p.temperature,
        "dataset": p.dataset,
        "loss_on": "all tokens" if p.dataset == "wikitext" else "answer tokens",
        "steps": p.steps,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "device": hardware.name(device),
        "dtype": f"{autocast} autocast".replace("torch.", "") if autocast else "float32",
        "trainable_params": trainable,
        "keep_sparsity": p.keep_sparsity,
        "sparsity_before": before,
        "sparsity_after": sparsity(weights),
    }
    return Healed(model, losses, metrics)
