"""Text sets for the pipeline: calibration, fine-tuning, named perplexity texts, a QA set and multiple-choice tasks.

Every source yields the same files, so later stages never know where the text came from:
`calibration.txt`, `finetune.txt`, `perplexity.json` (`{name: {"domain": "in" | "out", "dataset", "text"}}`:
the held-out text of the healing domain and a text of a domain neither calibration nor healing saw),
`qa.jsonl` (evaluation questions), `qa_train.jsonl` (disjoint questions for LoRA), QA records being
`{"question": str, "answer": str, "aliases": [str], "context": str | null}`, and `choice.json`
(`{task: {"dataset", "items": [{"query", "choices", "gold"}]}}`: the QA set as multiple choice, plus
`data.choice_files`).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from llmshrink import choice, pypi
from llmshrink.params.data import Data

FILES = ("calibration.txt", "finetune.txt", "perplexity.json", "qa.jsonl", "qa_train.jsonl", "choice.json")
OUT_OF_DOMAIN_WHEEL = "gensim==4.4.0"  # ships the Lee background corpus (ABC news articles) in its test data
OUT_OF_DOMAIN_FILE = "gensim/test/test_data/lee_background.cor"


@dataclass
class TextSets:
    calibration: str
    finetune: str
    perplexity: dict[str, dict[str, str]]
    qa: list[dict[str, Any]]
    qa_train: list[dict[str, Any]]
    choice: dict[str, dict[str, Any]] = field(default_factory=dict)

    def write(self, out_dir: Path) -> None:
        """Write the files into `out_dir` (byte-identical for identical inputs)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in ("calibration", "finetune"):
            (out_dir / f"{name}.txt").write_text(getattr(self, name), encoding="utf-8")
        for name in ("perplexity", "choice"):
            text = json.dumps(getattr(self, name), ensure_ascii=False, sort_keys=True, indent=1)
            (out_dir / f"{name}.json").write_text(text + "\n", encoding="utf-8")
        for name in ("qa", "qa_train"):
            lines = (json.dumps(r, ensure_ascii=False, sort_keys=True) for r in getattr(self, name))
            (out_dir / f"{name}.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def text(domain: str, dataset: str, body: str) -> dict[str, str]:
    """A named perplexity text: its domain relative to the healing text (`in` / `out`) and where it comes from."""
    return {"domain": domain, "dataset": dataset, "text": body}


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
    news = pypi.wheel_file(OUT_OF_DOMAIN_WHEEL, OUT_OF_DOMAIN_FILE).read_text(encoding="utf-8")
    perplexity = {
        "pydoc": text("in", "Python documentation topics held out from calibration and healing (pydoc_data)", "\n\n".join(held)),
        "news": text("out", "Lee background corpus: 300 ABC news articles (gensim 4.4.0 test data)",
                     "\n\n".join(line.strip() for line in news.splitlines() if line.strip())),
    }
    return TextSets(calibration, finetune, perplexity, qa, qa_train)


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
    lines = _existing("data.local.triviaqa", paths["triviaqa"]).read_text(encoding="utf-8").split("\n")
    records = []
    for line in filter(None, lines):
        r = json.loads(line)
        records.append(qa_record(r["question"], r["answer"]["value"], r["answer"]["aliases"], r.get("context")))
    qa, qa_train = split_qa(records, p.qa_eval, p.qa_train, seed)
    shakespeare = _existing("data.local.shakespeare", paths["shakespeare"]).read_text(encoding="utf-8")
    perplexity = {"wikitext2": text("in", "WikiText-2 raw test", "\n\n".join(test_rows)),
                  "shakespeare": text("out", "Tiny Shakespeare", shakespeare)}
    return TextSets(calibration, finetune, perplexity, qa, qa_train)


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
        c4_valid = datasets.load_dataset(
            "allenai/c4", data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"}, split="validation"
        )
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
    perplexity = {"wikitext2": text("in", "WikiText-2 raw test", "\n\n".join(wiki["test"]["text"])),
                  "c4": text("out" if h["calibration"] == "wikitext" else "in", "C4 en validation, first 1,000 documents",
                             "\n\n".join(c4_valid.select(range(1000))["text"]))}
    return TextSets(calibration, finetune, perplexity, qa, qa_train)


def choice_tasks(p: Data, qa: list[dict[str, Any]], seed: int) -> dict[str, dict[str, Any]]:
    """Multiple-choice tasks: the evaluation QA set as multiple choice (`qa`) and every `data.choice_files` jsonl,
    each a seeded sample of at most `data.choice_items` items."""
    tasks = {"qa": {"dataset": "the evaluation QA questions, distractors from other answers of the same kind",
                    "items": choice.from_qa(qa, seed=seed)}}
    for name, path in p.choice_files.items():
        tasks[name] = {"dataset": Path(path).name, "items": choice.read_items(_existing(f"data.choice_files.{name}", path))}
    for task in tasks.values():
        if len(task["items"]) > p.choice_items:
            task["items"] = random.Random(seed).sample(task["items"], p.choice_items)
    return tasks


def prepare(p: Data, seed: int) -> TextSets:
    """The text sets from `data.source`, shuffled and split with `seed`."""
    sets = {"embedded": embedded, "local": local, "hub": hub}[p.source](p, seed)
    sets.choice = choice_tasks(p, sets.qa, seed)
    return sets
