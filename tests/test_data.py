"""prepare_data: each source yields the promised files; same params, same bytes; held-out text is disjoint."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from llmshrink import data
from llmshrink.params import load, load_seed
from llmshrink.params.data import Data
from llmshrink.qa import read_qa

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load(Data, ROOT / "params.yaml")
SEED = load_seed(ROOT / "params.yaml")


def with_(**changes) -> Data:
    """The repo's data params with `changes` (validated like params.yaml)."""
    return dataclasses.replace(PARAMS, **changes)


def check_files(out: Path, min_qa: int) -> list[dict]:
    """Assert the files exist in the promised format; return the QA records."""
    for name in ("calibration.txt", "finetune.txt"):
        assert len((out / name).read_text(encoding="utf-8")) > 10_000, name
    texts = json.loads((out / "perplexity.json").read_text(encoding="utf-8"))
    assert sorted(t["domain"] for t in texts.values()) == ["in", "out"]
    assert all(len(t["text"]) > 50_000 and t["dataset"] for t in texts.values())
    tasks = json.loads((out / "choice.json").read_text(encoding="utf-8"))
    assert tasks["qa"]["items"] and all(0 <= i["gold"] < len(i["choices"]) for t in tasks.values() for i in t["items"])
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
    texts = json.loads((tmp_path / "a" / "perplexity.json").read_text())
    held = texts["pydoc"]["text"]
    assert texts["pydoc"]["domain"] == "in" and texts["news"]["domain"] == "out"
    assert "bushfire" in texts["news"]["text"] and "bushfire" not in held  # ABC news, not Python documentation
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
        "triviaqa": str(shared_data / "triviaqa" / "validation.jsonl"),
        "shakespeare": str(shared_data / "text" / "tinyshakespeare.txt")},
        choice_files={"piqa": str(shared_data / "zeroshot" / "piqa.jsonl")}, choice_items=50)
    data.prepare(p, SEED).write(tmp_path)
    qa = check_files(tmp_path, min_qa=PARAMS.qa_eval)
    assert all(r["context"] is None for r in qa)
    rows = json.loads((shared_data / "wikitext2" / "test_rows.json").read_text())
    texts = json.loads((tmp_path / "perplexity.json").read_text())
    assert texts["wikitext2"]["text"] == "\n\n".join(rows) and texts["shakespeare"]["domain"] == "out"
    tasks = json.loads((tmp_path / "choice.json").read_text())
    assert {k: len(t["items"]) for k, t in tasks.items()} == {"qa": 50, "piqa": 50}
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
