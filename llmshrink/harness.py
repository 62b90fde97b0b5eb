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

from llmshrink import family

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
    """lm-eval's `HFLM` with its log-likelihood requests tokenized and scored a batch at a time, the requests that
    share a context scored in one sequence.

    Same requests, same token split (`_encode_pair`: the context's trailing spaces move to the continuation, the
    pair is encoded whole and the continuation is what follows the context's own encoding), same truncation to
    `max_length` and the same log-softmax at the continuation's positions; what changes is where the work happens.
    Stock HFLM tokenizes one request at a time and picks each request's log-probabilities apart with a few small
    tensor operations and a device sync, about 1.5 ms a request whatever the model, most of a multiple-choice
    evaluation on a GPU. Here the tokenizer runs once over all distinct strings and a batch's sums come back in one
    transfer (summed in float32: stock HFLM sums in the softmax dtype). The requests of one (truncated) context,
    a multiple-choice item's choices, run as one packed row (`_grouped`): the context once, then each
    continuation's input tokens, each attending to the context and to itself only, its positions following the
    context's, as if it ran alone; the head and log-softmax run only at the positions scored. Rows are sorted by
    length, a batch as many tokens as `batch_size` rows of the median length (less padding than `batch_size` rows
    when lengths spread, as PIQA's beside ARC's). Without packing (`grouped = False`, attention other than sdpa or
    eager, mixed precision, or inputs longer than a sliding window) each request runs as its own right-padded row
    (`_per_request`). Empty contexts, seq2seq models and `batch_size="auto"` take HFLM's own path."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.models.utils import _add_special_kwargs, has_bos_prefix

    class BatchedHFLM(HFLM):
        grouped = True  # requests sharing a context packed into one row; False: one row per request

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
            for key, context, continuation in requests:
                if not context or not continuation or len(continuation) > self.max_length:
                    raise ValueError(f"request {key!r}: empty context or continuation, or a "
                                     f"continuation longer than max_length={self.max_length}")
            config = self.model.config
            longest = max(min(len(c) + len(k) - 1, self.max_length) for _, c, k in requests)
            packs = (self.grouped and self.mixed_precision_dtype is None
                     and config._attn_implementation in ("sdpa", "eager")
                     and longest <= (getattr(config, "sliding_window", None) or longest))
            out = (self._grouped if packs else self._per_request)(requests, size, disable_tqdm)
            for (key, _, _), result in zip(requests, out):
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, result)
            return out

        def _sums(self, logits: torch.Tensor, use: torch.Tensor, targets: torch.Tensor, owner: torch.Tensor,
                  n: int) -> list[tuple[float, bool]]:
            """Per request (`owner` of each target token, `n` requests): the summed log-probability of its
            `targets`, token t scored by row `use[t]` of `logits`, and whether each target is the greedy token;
            one transfer."""
            logp = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
            picked = logp[use, targets].float()
            miss = (logp.argmax(-1)[use] != targets).float()
            sums = torch.zeros(n, 2, device=self.device).index_add_(0, owner, torch.stack([picked, miss], dim=1))
            return [(total, misses == 0) for total, misses in sums.tolist()]

        def _per_request(self, requests: list[Any], size: int, disable_tqdm: bool) -> list[tuple[float, bool]]:
            """Each request as its own row, `(context + continuation)[-(max_length + 1):][:-1]` as stock HFLM."""
            order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
            out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
            for start in tqdm(range(0, len(order), size), desc="loglikelihood batches", disable=disable_tqdm):
                idx = order[start : start + size]
                inps = [(requests[i][1] + requests[i][2])[-(self.max_length + 1) :][:-1] for i in idx]
                conts = [requests[i][2] for i in idx]
                width = max(map(len, inps))
                batch = torch.tensor([x + [0] * (width - len(x)) for x in inps], device=self.device)
                rows = torch.tensor([r for r, c in enumerate(conts) for _ in c], device=self.device)
                cols = torch.tensor([len(x) - len(c) + k for x, c in zip(inps, conts) for k in range(len(c))],
                                    device=self.device)
                targets = torch.tensor([t for c in conts for t in c], device=self.device)
                logits = self._model_call(batch)
                logits = logits.reshape(-1, logits.shape[-1]).index_select(0, rows * width + cols)
                for i, result in zip(idx, self._sums(logits, torch.arange(len(targets), device=self.device),
                                                     targets, rows, len(idx))):
                    out[i] = result
            return out

        def _grouped(self, requests: list[Any], size: int, disable_tqdm: bool) -> list[tuple[float, bool]]:
            """The requests of one context (the part of it stock HFLM keeps) as one row: the context, then each
            continuation but its last token, attending to the context and causally to itself, at the positions it
            would have alone. The context's last position predicts every continuation's first token."""
            groups: dict[tuple[int, ...], list[int]] = {}
            for i, (_, context, continuation) in enumerate(requests):
                groups.setdefault(tuple(context[len(continuation) - self.max_length - 1 :]), []).append(i)
            rows = [([*context, *(t for i in members for t in requests[i][2][:-1])], len(context), members)
                    for context, members in groups.items()]
            rows.sort(key=lambda row: -len(row[0]))
            budget = size * len(rows[len(rows) // 2][0])  # tokens a batch: `size` rows of the median length
            starts = [0]
            while starts[-1] < len(rows):
                starts.append(starts[-1] + max(1, budget // len(rows[starts[-1]][0])))
            decoder, head = self.model.get_decoder(), family.head(self.model)
            dtype = self.model.dtype
            out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
            for start, end in tqdm(list(zip(starts, starts[1:])), desc="loglikelihood batches", disable=disable_tqdm):
                width = len(rows[start][0])
                ids, block, pos, at, use, targets, owner, idx = [], [], [], [], [], [], [], []
                for r, (row, n_context, members) in enumerate(rows[start:end]):
                    pad = width - len(row)
                    ids += row + [0] * pad
                    pos += range(n_context)
                    block += [0] * n_context
                    first = next_ = len(at)  # at: the flat positions scored, the context's last one first
                    at += range(r * width + n_context - 1, r * width + len(row))
                    for b, i in enumerate(members, start=1):
                        continuation = requests[i][2]
                        use += [first, *range(next_ + 1, next_ + len(continuation))]
                        next_ += len(continuation) - 1
                        pos += range(n_context, n_context + len(continuation) - 1)
                        block += [b] * (len(continuation) - 1)
                        targets += continuation
                        owner += [len(idx)] * len(continuation)
                        idx.append(i)
                    pos += [0] * pad
                    block += [-1] * pad  # padding attends to the context and to padding: no row fully masked
                tensor = functools.partial(torch.tensor, device=self.device)
                ids, block, pos = (tensor(x).view(-1, width) for x in (ids, block, pos))
                allowed = torch.ones(width, width, dtype=torch.bool, device=self.device).tril() & (
                    (block[:, None, :] == 0) | (block[:, None, :] == block[:, :, None]))
                mask = torch.zeros(allowed.shape, dtype=dtype, device=self.device).masked_fill_(
                    ~allowed, torch.finfo(dtype).min)[:, None]
                hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
                hidden = hidden.last_hidden_state
                logits = head(hidden.reshape(-1, hidden.shape[-1]).index_select(0, tensor(at)))
                for i, result in zip(idx, self._sums(logits, tensor(use), tensor(targets), tensor(owner), len(idx))):
                    out[i] = result
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
