"""lm-evaluation-harness on an already loaded model, with its stock tasks reading local json files."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

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


def run(model: Any, tokenizer: Any, tasks: list[str | dict[str, Any]], task_manager: Any, batch_size: int,
        max_length: int | None = None, limit: int | None = None) -> dict[str, Any]:
    """`lm_eval.simple_evaluate` with an `HFLM` wrapping the loaded `model`; the full result
    (metrics under "results", per-document outputs under "samples")."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
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
