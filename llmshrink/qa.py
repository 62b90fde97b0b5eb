"""TriviaQA-style question answering: prompts, batched greedy generation and answer matching."""
from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

ARTICLES = re.compile(r"\b(a|an|the)\b")


def read_qa(path: str | Path) -> list[dict[str, Any]]:
    """Read a QA jsonl file written by `llmshrink.data.TextSets.write`: `{"question", "answer", "aliases", "context"}`."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").split("\n") if line]  # not splitlines: U+2028 may occur in a string


def normalize(text: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace (SQuAD/TriviaQA style)."""
    text = "".join(ch for ch in text.lower() if not unicodedata.category(ch).startswith("P"))
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_match(answer: str, aliases: list[str]) -> bool:
    """The normalized answer equals a normalized alias."""
    norm = normalize(answer)
    return any(norm == normalize(a) for a in aliases)


def match(answer: str, aliases: list[str], word_share: float = 0.8) -> bool:
    """The thesis's three-tier rule: exact match; else a normalized alias occurs in the normalized
    answer as whole words; else at least `word_share` of an alias's words occur in the answer."""
    if exact_match(answer, aliases):
        return True
    norm = normalize(answer)
    words = set(norm.split())
    for alias in filter(None, map(normalize, aliases)):
        if f" {alias} " in f" {norm} ":
            return True
        alias_words = alias.split()
        if sum(w in words for w in alias_words) >= word_share * len(alias_words):
            return True
    return False


def prompt(record: dict[str, Any], open_book: bool = False) -> str:
    """Closed book `Question: ...\\nAnswer:`; open book puts the record's context before the question."""
    question = f"Question: {record['question']}\nAnswer:"
    return f"Context: {record['context']}\n\n{question}" if open_book else question


def chat(tokenizer: Any, text: str) -> str:
    """`text` as one user turn in the tokenizer's chat template, ready for the assistant's reply."""
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


def first_line(text: str) -> str:
    """The answer in a generation: its first non-empty line, stripped (models often begin with a newline)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int,
             progress: bool = True) -> list[str]:
    """Greedy answers (first non-empty line), in batches of similar length with left padding."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: dict[int, str] = {}
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="generate", disable=not progress, leave=False):
            idx = order[start : start + batch_size]
            batch = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            batch = batch.to(model.device)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id)
            texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            answers.update((i, first_line(t)) for i, t in zip(idx, texts))
    finally:
        tokenizer.padding_side = side
    return [answers[i] for i in range(len(prompts))]


def score(answers: list[str], records: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Per answer: 1 if it exactly matches / matches (three-tier rule) an alias of its record, else 0."""
    return {"exact_match": [int(exact_match(a, r["aliases"])) for a, r in zip(answers, records)],
            "match": [int(match(a, r["aliases"])) for a, r in zip(answers, records)]}


def triviaqa(model: Any, tokenizer: Any, records: list[dict[str, Any]], max_new_tokens: int, batch_size: int,
             chat_template: bool = False, limit: int | None = None) -> dict[str, Any]:
    """`triviaqa` metrics: closed-book exact match and match over the first `limit` records; open-book
    exact match and match over those with a context (null when none has one); per-question results under
    `items` (`exact_match`, `match`, `open_exact_match`, `open_match`: lists of 0/1)."""
    records = records[:limit] if limit else records
    if not records:
        raise ValueError("no QA records to evaluate")
    wrap = (lambda t: chat(tokenizer, t)) if chat_template else (lambda t: t)

    def run(recs: list[dict[str, Any]], open_book: bool) -> tuple[list[str], dict[str, list[int]]]:
        answers = generate(model, tokenizer, [wrap(prompt(r, open_book)) for r in recs], max_new_tokens, batch_size)
        return answers, score(answers, recs)

    def share(values: list[int]) -> float | None:
        return sum(values) / len(values) if values else None

    answers, closed = run(records, open_book=False)
    with_context = [r for r in records if r.get("context")]
    opened = run(with_context, open_book=True)[1] if with_context else {"exact_match": [], "match": []}
    samples = [{"question": r["question"], "answer": r["answer"], "generated": a} for r, a in zip(records[:5], answers)]
    return {"exact_match": share(closed["exact_match"]), "match": share(closed["match"]), "n": len(records),
            "open_exact_match": share(opened["exact_match"]), "open_match": share(opened["match"]),
            "open_n": len(with_context), "samples": samples,
            "items": {**closed, "open_exact_match": opened["exact_match"], "open_match": opened["match"]}}
