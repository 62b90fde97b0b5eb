"""Text sets for the pipeline: calibration, fine-tuning, held-out perplexity text and a QA set.

Every source yields the same files, so later stages never know where the text came from:
`calibration.txt`, `finetune.txt`, `perplexity.txt`, `qa.jsonl` (evaluation questions) and
`qa_train.jsonl` (disjoint questions for LoRA), QA records being
`{"question": str, "answer": str, "aliases": [str], "context": str | null}`.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from llmshrink.params import Data

FILES = ("calibration.txt", "finetune.txt", "perplexity.txt", "qa.jsonl", "qa_train.jsonl")


@dataclass
class TextSets:
    calibration: str
    finetune: str
    perplexity: str
    qa: list[dict[str, Any]]
    qa_train: list[dict[str, Any]]

    def write(self, out_dir: Path) -> None:
        """Write the five files into `out_dir` (byte-identical for identical inputs)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in ("calibration", "finetune", "perplexity"):
            (out_dir / f"{name}.txt").write_text(getattr(self, name), encoding="utf-8")
        for name in ("qa", "qa_train"):
            lines = (json.dumps(r, ensure_ascii=False, sort_keys=True) for r in getattr(self, name))
            (out_dir / f"{name}.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def qa_record(question: str, answer: str, aliases: list[str], context: str | None = None) -> dict[str, Any]:
    """One QA record in the pipeline's format (the answer is always among the aliases)."""
    aliases = list(dict.fromkeys([answer, *aliases]))
    return {"question": question.strip(), "answer": answer, "aliases": aliases, "context": context}


def split_qa(records: list[dict[str, Any]], n_eval: int, n_train: int, seed: int) -> tuple[list, list]:
    """Shuffle with `seed`; the first `n_eval` are evaluated, the next `n_train` may be trained on."""
    if n_eval < 1 or n_train < 0:
        raise ValueError(f"data.qa_eval={n_eval} must be >= 1 and data.qa_train={n_train} >= 0")
    records = records[:]
    random.Random(seed).shuffle(records)
    return records[:n_eval], records[n_eval : n_eval + n_train]


def split_pool(text_blocks: list[str], calibration_share: float, max_chars: int) -> tuple[str, str]:
    """Split blocks (kept whole and in order) into disjoint calibration and fine-tuning text."""
    cut = round(len(text_blocks) * calibration_share)
    return "\n\n".join(text_blocks[:cut])[:max_chars], "\n\n".join(text_blocks[cut:])[:max_chars]


def embedded(p: Data, seed: int) -> TextSets:
    """No network: the Python documentation shipped with the standard library (PSF licence) as prose,
    split by topic (paragraphs shared with held-out topics dropped) so held-out, calibration and
    fine-tuning text never overlap; and the project's own
    general-knowledge QA set with open-book contexts."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    random.Random(seed).shuffle(names)
    n_held = round(len(names) * p.heldout_share)
    held = [topics[n].strip() for n in names[:n_held]]
    held_paragraphs = {para.strip() for t in held for para in t.split("\n\n")}
    pool = [para.strip() for n in names[n_held:] for para in topics[n].split("\n\n")]
    pool = [para for para in dict.fromkeys(pool) if para and para not in held_paragraphs]
    calibration, finetune = split_pool(pool, p.calibration_share, p.max_chars)
    path = resources.files("llmshrink") / "resources" / "qa_embedded.jsonl"
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    records = [qa_record(r["question"], r["answer"]["value"], r["answer"]["aliases"], r["context"]) for r in raw]
    qa, qa_train = split_qa(records, p.qa_eval, p.qa_train, seed)
    return TextSets(calibration, finetune, "\n\n".join(held), qa, qa_train)


def _existing(name: str, path: str) -> Path:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{name}={path!r}: no such file")
    return Path(path)


def local(p: Data, seed: int) -> TextSets:
    """Files in the layout of `../shared/data`: WikiText-2 test rows, tokenized validation text, TriviaQA jsonl."""
    paths = p.local
    test_rows = json.loads(_existing("data.local.wikitext_test", paths["wikitext_test"]).read_text(encoding="utf-8"))
    valid = _existing("data.local.wikitext_valid", paths["wikitext_valid"]).read_text(encoding="utf-8")
    blocks = [b.strip() for b in valid.split("\n \n") if b.strip()]
    calibration, finetune = split_pool(blocks, p.calibration_share, p.max_chars)
    lines = _existing("data.local.triviaqa", paths["triviaqa"]).read_text(encoding="utf-8").splitlines()
    records = []
    for line in filter(None, lines):
        r = json.loads(line)
        records.append(qa_record(r["question"], r["answer"]["value"], r["answer"]["aliases"], r.get("context")))
    qa, qa_train = split_qa(records, p.qa_eval, p.qa_train, seed)
    return TextSets(calibration, finetune, "\n\n".join(test_rows), qa, qa_train)


def hub(p: Data, seed: int) -> TextSets:
    """The real datasets from the Hugging Face hub: WikiText-2 raw (test for perplexity, train for
    calibration and fine-tuning, or C4 for calibration) and TriviaQA (`rc` with contexts, else `rc.nocontext`)."""
    import datasets

    h = p.hub
    try:
        wiki = datasets.load_dataset("wikitext", "wikitext-2-raw-v1")
        train_blocks = [b.strip() for b in "".join(wiki["train"]["text"]).split("\n = ") if b.strip()]
        calibration, finetune = split_pool(train_blocks, p.calibration_share, p.max_chars)
        if h["calibration"] == "c4":
            c4 = datasets.load_dataset(
                "allenai/c4", data_files={"train": "en/c4-train.00000-of-01024.json.gz"}, split="train"
            )
            docs = c4.shuffle(seed=seed).select(range(2000))["text"]
            calibration = "\n\n".join(docs)[: p.max_chars]
        config = "rc" if h["open_book"] else "rc.nocontext"
        trivia = datasets.load_dataset("trivia_qa", config)
    except (OSError, ConnectionError) as err:
        raise RuntimeError(f"data.source='hub' needs the Hugging Face hub, which could not be reached: {err}") from err

    def records(split: Any, n: int) -> list[dict[str, Any]]:
        out = []
        for r in split.shuffle(seed=seed).select(range(min(n, len(split)))):
            pages = r.get("entity_pages", {}).get("wiki_context") or []
            context = pages[0][: h["context_chars"]] if pages else None
            out.append(qa_record(r["question"], r["answer"]["value"], r["answer"]["aliases"], context))
        return out

    qa = records(trivia["validation"], p.qa_eval)
    qa_train = records(trivia["train"], p.qa_train)
    return TextSets(calibration, finetune, "\n\n".join(wiki["test"]["text"]), qa, qa_train)


def prepare(p: Data, seed: int) -> TextSets:
    """The text sets from `data.source`, shuffled and split with `seed`."""
    return {"embedded": embedded, "local": local, "hub": hub}[p.source](p, seed)
