"""Multiple-choice evaluation scored by log-likelihood through lm-eval (acc, acc_norm), item by item.

An item is `{"query": str, "choices": [str], "gold": int}` (the layout of ../shared/data/zeroshot):
each choice is scored as a continuation of the query after a space.
"""
from __future__ import annotations

import json
import random
import re
import tempfile
from pathlib import Path
from typing import Any

from llmshrink import harness, qa

METRICS = ("acc", "acc_norm")
NUMBER = re.compile(r"-?\d[\d,]*(\.\d+)?")


def check_item(item: Any) -> str | None:
    """Why `item` is not a valid multiple-choice item, or None when it is."""
    if not isinstance(item, dict) or not {"query", "choices", "gold"} <= item.keys():
        return "expected an object with query, choices and gold"
    choices, gold = item["choices"], item["gold"]
    if not isinstance(item["query"], str) or not item["query"]:
        return "query must be a non-empty string"
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        return "choices must be a list of at least 2 strings"
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        return f"gold must be an index into the {len(choices)} choices, got {gold!r}"
    return None


def read_items(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate a multiple-choice jsonl file (blank lines skipped); errors name the file and line."""
    items = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").split("\n"), start=1):  # not splitlines: U+2028
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not JSON ({err})") from None
        if problem := check_item(item):
            raise ValueError(f"{path}:{number}: {problem}")
        items.append(item)
    return items


def from_qa(records: list[dict[str, Any]], n_choices: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """Multiple-choice items from QA records: the closed-book prompt of `qa.prompt`, the gold answer and
    `n_choices - 1` other records' answers, the gold at a seeded random position.

    Distractors of the same kind: candidates are ranked by (1) the same shape as the gold answer (a number
    or not), (2) the most leading question words shared with the gold's question ("What is the capital
    of ..." gives capitals, "In what year did ..." years), (3) the same number of words, then at random.
    A candidate is skipped when any of its normalized aliases equals one of the gold's or of a
    distractor already taken."""
    if n_choices < 2:
        raise ValueError(f"n_choices={n_choices} must be >= 2")
    rng = random.Random(seed)
    aliases = [{qa.normalize(a) for a in r["aliases"]} | {qa.normalize(r["answer"])} for r in records]
    words = [r["question"].lower().split() for r in records]

    def is_number(answer: str) -> bool:
        return NUMBER.fullmatch(answer.strip()) is not None

    def shared(a: list[str], b: list[str]) -> int:
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    items = []
    for i, record in enumerate(records):
        gold = record["answer"]

        def rank(j: int) -> tuple[bool, int, bool, float]:
            other = records[j]["answer"]
            return (is_number(other) != is_number(gold), -shared(words[i], words[j]),
                    len(other.split()) != len(gold.split()), rng.random())

        taken, seen = [], set(aliases[i])
        for j in sorted((j for j in range(len(records)) if j != i), key=rank):
            if len(taken) == n_choices - 1:
                break
            if not aliases[j] & seen:
                taken.append(records[j]["answer"])
                seen |= aliases[j]
        if len(taken) < n_choices - 1:
            raise ValueError(f"only {len(taken)} distinct distractors for {record['question']!r}; "
                             f"n_choices={n_choices} needs {n_choices - 1}")
        position = rng.randrange(n_choices)
        choices = [*taken[:position], gold, *taken[position:]]
        items.append({"query": qa.prompt(record), "choices": choices, "gold": position})
    return items


def task_config(name: str, data_file: str | Path) -> dict[str, Any]:
    """An lm-eval multiple-choice task `name` over the items in the jsonl `data_file`."""
    return {"task": name, "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {"test": str(data_file)}}, "test_split": "test",
            "output_type": "multiple_choice", "doc_to_text": "query", "doc_to_choice": "choices",
            "doc_to_target": "gold", "target_delimiter": " ", "num_fewshot": 0,
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in METRICS]}


def score(model: Any, tokenizer: Any, tasks: dict[str, list[dict[str, Any]]], batch_size: int,
          limit: int | None = None) -> dict[str, list[dict[str, int]]]:
    """Per task, per item (in order; the first `limit` items) `{"acc": 0|1, "acc_norm": 0|1}` as computed
    by lm-eval: the choice of highest log-likelihood, and of highest log-likelihood per character."""
    from lm_eval.tasks import TaskManager

    for name, items in tasks.items():
        problem = "no items" if not items else next(filter(None, map(check_item, items)), None)
        if problem:
            raise ValueError(f"task {name!r}: {problem}")
    with tempfile.TemporaryDirectory() as tmp:
        configs = []
        for k, (name, items) in enumerate(tasks.items()):
            path = Path(tmp) / f"{k}.jsonl"
            lines = (json.dumps({key: item[key] for key in ("query", "choices", "gold")}) for item in items)
            path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            configs.append(task_config(name, path))
        samples = harness.run(model, tokenizer, configs, TaskManager(include_defaults=False), batch_size,
                              limit=limit)["samples"]
    return {name: [{m: int(s[m]) for m in METRICS} for s in sorted(samples[name], key=lambda s: s["doc_id"])]
            for name in tasks}


def score_stock(model: Any, tokenizer: Any, names: list[str], batch_size: int,
                limit: int | None = None) -> dict[str, tuple[list[dict[str, int]], float]]:
    """lm-eval's own multiple-choice tasks by name (BoolQ, PIQA, HellaSwag, WinoGrande, ARC, OpenBookQA: the
    zero-shot suite of the pruning papers), their data from the Hugging Face hub: per task the per-item
    `{"acc", "acc_norm"}` (acc_norm = acc where the task has none) and the chance level."""
    from lm_eval.tasks import TaskManager

    samples = harness.run(model, tokenizer, list(names), TaskManager(), batch_size, limit=limit)["samples"]
    out = {}
    for name in names:
        ordered = sorted(samples[name], key=lambda s: s["doc_id"])
        items = [{m: int(s.get(m, s["acc"])) for m in METRICS} for s in ordered]
        out[name] = items, sum(1 / len(s["arguments"]) for s in ordered) / len(ordered)
    return out
