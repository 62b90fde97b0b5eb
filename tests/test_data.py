"""prepare_data: each source yields the promised files; same params, same bytes; held-out text is disjoint."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from llmshrink import data, params
from llmshrink.qa import read_qa

ROOT = Path(__file__).resolve().parents[1]
PARAMS = params.load("data", ROOT / "params.yaml")
SEED = params.load("seed", ROOT / "params.yaml")


def with_(**changes) -> params.Data:
    """The repo's data params with `changes` (validated like params.yaml)."""
    return dataclasses.replace(PARAMS, **changes)


def check_files(out: Path, min_qa: int) -> list[dict]:
    """Assert the five files exist in the promised format; return the QA records."""
    for name in ("calibration.txt", "finetune.txt", "perplexity.txt"):
        assert len((out / name).read_text(encoding="utf-8")) > 10_000, name
    qa = read_qa(out / "qa.jsonl")
    assert len(qa) >= min_qa
    for r in qa + read_qa(out / "qa_train.jsonl"):
        assert set(r) == {"question", "answer", "aliases", "context"}
        assert r["question"] and r["answer"] in r["aliases"]
    return qa


def digest(out: Path) -> str:
    return hashlib.sha256(b"".join((out / n).read_bytes() for n in data.FILES)).hexdigest()


def test_embedded_source(tmp_path: Path) -> None:
    data.prepare(PARAMS, SEED).write(tmp_path / "a")
    qa = check_files(tmp_path / "a", min_qa=200)
    assert all(r["context"] for r in qa)
    assert sum(any(a.lower() in r["context"].lower() for a in r["aliases"]) for r in qa) == len(qa)
    train_questions = {r["question"] for r in read_qa(tmp_path / "a" / "qa_train.jsonl")}
    assert not train_questions & {r["question"] for r in qa}
    held = (tmp_path / "a" / "perplexity.txt").read_text()
    for name in ("calibration.txt", "finetune.txt"):
        paragraphs = [p for p in (tmp_path / "a" / name).read_text().split("\n\n") if len(p) > 200]
        assert paragraphs and not any(p in held for p in paragraphs)
    data.prepare(PARAMS, SEED).write(tmp_path / "b")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    data.prepare(PARAMS, SEED + 1).write(tmp_path / "c")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_local_source(tmp_path: Path, shared_data: Path) -> None:
    p = with_(source="local", local={
        "wikitext_test": str(shared_data / "wikitext2" / "test_rows.json"),
        "wikitext_valid": str(shared_data / "wikitext2" / "valid_tokens.txt"),
        "triviaqa": str(shared_data / "triviaqa" / "validation.jsonl")})
    data.prepare(p, SEED).write(tmp_path)
    qa = check_files(tmp_path, min_qa=PARAMS.qa_eval)
    assert all(r["context"] is None for r in qa)
    rows = json.loads((shared_data / "wikitext2" / "test_rows.json").read_text())
    assert (tmp_path / "perplexity.txt").read_text() == "\n\n".join(rows)
    assert "<unk>" in (tmp_path / "calibration.txt").read_text()


def test_bad_source_and_missing_file() -> None:
    with pytest.raises(ValueError, match=r"data.source='web'.*\['embedded', 'local', 'hub'\]"):
        with_(source="web")
    with pytest.raises(FileNotFoundError, match="data.local.wikitext_test"):
        data.prepare(with_(source="local", local={**PARAMS.local, "wikitext_test": "/nope.json"}), SEED)


def test_hub_unreachable_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="data.source='hub'"):
        data.prepare(with_(source="hub"), SEED)
