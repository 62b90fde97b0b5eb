"""lm-evaluation-harness on an already loaded model, with its stock tasks reading local json files."""
from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

SPLITS = ("training_split", "validation_split", "test_split", "fewshot_split")


def local_task(task_manager: Any, name: str, split: str, data_file: str | Path, **overrides: Any) -> dict[str, Any]:
    """The config of lm-eval's stock task `name` with its `split` read from a local json/jsonl file
    (the hub dataset's layout) instead of the hub; other splits are dropped."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = dict(load_yaml(task_manager.task_index[name].yaml_path, resolve_func=True))
    for key in SPLITS:
        if cfg.get(key) != split:
            cfg.pop(key, None)
    return {**cfg, "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(data_file)}}, **overrides}


@functools.cache
def batched_hflm() -> type:
    """lm-eval's `HFLM` with its log-likelihood requests tokenized and scored a batch at a time.

    Same requests, same token split (`_encode_pair`: the context's trailing spaces move to the continuation, the
    pair is encoded whole and the continuation is what follows the context's own encoding), same right-padded
    inputs and the same log-softmax at the continuation's positions; what changes is where the work happens. Stock
    HFLM tokenizes one request at a time and picks each request's log-probabilities apart with a few small tensor
    operations and a device sync, about 1.5 ms a request whatever the model, most of a multiple-choice evaluation
    on a GPU. Here the tokenizer runs once over all distinct strings, the log-softmax only over the continuation's
    positions of a whole batch, and a batch's sums come back in one transfer (summed in float32: stock HFLM sums
    in the softmax dtype). Empty contexts, seq2seq models and `batch_size="auto"` take HFLM's own path."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.models.utils import _add_special_kwargs, has_bos_prefix

    class BatchedHFLM(HFLM):
        def _encode_many(self, strings: list[str]) -> dict[str, list[int]]:
            """`tok_encode` of each distinct string, the tokenizer called once per special-token setting."""
            bos = self.tokenizer.decode(self.prefix_token_id)
            default = _add_special_kwargs(None, self.add_bos_token).get("add_special_tokens")
            groups: dict[bool | None, list[str]] = {}
            for text in dict.fromkeys(strings):
                groups.setdefault(False if has_bos_prefix(text, bos) else default, []).append(text)
            out: dict[str, list[int]] = {}
            for special, texts in groups.items():
                kwargs = {} if special is None else {"add_special_tokens": special}
                out.update(zip(texts, self.tokenizer(texts, **kwargs)["input_ids"]))
            return out

        def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            pairs = [req.args for req in requests]
            if self.backend != "causal" or any(context == "" for context, _ in pairs):
                return super().loglikelihood(requests, disable_tqdm)
            splits = []
            for context, continuation in pairs:  # _encode_pair's split
                spaces = len(context) - len(context.rstrip())
                splits.append((context[: len(context) - spaces], context[len(context) - spaces :] + continuation))
            enc = self._encode_many([c for c, _ in splits] + [c + k for c, k in splits])
            return self._loglikelihood_tokens([(pair, enc[c], enc[c + k][len(enc[c]) :])
                                               for pair, (c, k) in zip(pairs, splits)], disable_tqdm)

        @torch.no_grad()
        def _loglikelihood_tokens(self, requests: list[Any], disable_tqdm: bool = False,
                                  override_bs: int | None = None) -> list[tuple[float, bool]]:
            size = override_bs or self.batch_size
            if self.backend != "causal" or size == "auto":
                return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
            order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
            out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
            for start in tqdm(range(0, len(order), size), desc="loglikelihood batches", disable=disable_tqdm):
                idx = order[start : start + size]
                inps, conts = [], []
                for i in idx:
                    _, context, continuation = requests[i]
                    if not context or not continuation or len(continuation) > self.max_length:
                        raise ValueError(f"request {requests[i][0]!r}: empty context or continuation, or a "
                                         f"continuation longer than max_length={self.max_length}")
                    inps.append((context + continuation)[-(self.max_length + 1) :][:-1])
                    conts.append(continuation)
                width = max(map(len, inps))
                batch = torch.tensor([x + [0] * (width - len(x)) for x in inps], device=self.device)
                rows = torch.tensor([r for r, c in enumerate(conts) for _ in c], device=self.device)
                cols = torch.tensor([len(x) - len(c) + k for x, c in zip(inps, conts) for k in range(len(c))],
                                    device=self.device)
                targets = torch.tensor([t for c in conts for t in c], device=self.device)
                logits = self._model_call(batch)
                logits = logits.reshape(-1, logits.shape[-1]).index_select(0, rows * width + cols)
                logp = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
                picked = logp.gather(1, targets[:, None])[:, 0].float()
                per_token = torch.stack([picked, (logp.argmax(-1) != targets).float()], dim=1)
                sums = torch.zeros(len(idx), 2, device=self.device).index_add_(0, rows, per_token)
                for i, (total, miss) in zip(idx, sums.tolist()):  # log-likelihood and greedy misses, one transfer
                    out[i] = (total, miss == 0)
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], out[i])
            return out

    return BatchedHFLM


def run(model: Any, tokenizer: Any, tasks: list[str | dict[str, Any]], task_manager: Any, batch_size: int,
        max_length: int | None = None, limit: int | None = None, stock: bool = False) -> dict[str, Any]:
    """`lm_eval.simple_evaluate` with lm-eval's `HFLM` (`batched_hflm`; `stock`: HFLM itself, for comparisons
    with lm-eval as shipped) wrapping the loaded `model`; the full result (metrics under "results", per-document
    outputs under "samples")."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    backend = HFLM if stock else batched_hflm()
    lm = backend(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=task_manager, limit=limit,
                                   bootstrap_iters=0, log_samples=True)


def wikitext(model: Any, tokenizer: Any, text: str | None, batch_size: int, max_length: int | None = None) -> dict[str, float]:
    """lm-eval's `wikitext` task: word and byte perplexity and bits per byte, on `text` as one document
    (None: the task's own hub data, EleutherAI/wikitext_document_level)."""
    from lm_eval.tasks import TaskManager

    tm = TaskManager()
    with tempfile.TemporaryDirectory() as tmp:
        task: str | dict[str, Any] = "wikitext"
        if text is not None:
            docs = Path(tmp) / "docs.jsonl"
            docs.write_text(json.dumps({"page": text}) + "\n", encoding="utf-8")
            task = local_task(tm, "wikitext", "test", docs)
        out = run(model, tokenizer, [task], tm, batch_size, max_length)["results"]["wikitext"]
    return {f"lm_eval_{k.split(',')[0]}": v for k, v in out.items() if k.endswith(",none")}
