"""Multiple-choice items (local files and the project's QA set) scored by lm-eval, checked against a direct computation."""
from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from llmshrink import choice, data, models, qa

N_ITEMS = 12


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return models.load(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def arc_items(shared_data):
    return choice.read_items(shared_data / "zeroshot" / "arc_easy.jsonl")[:N_ITEMS]


@pytest.fixture(scope="module")
def qa_records():
    path = resources.files("llmshrink") / "resources" / "qa_embedded.jsonl"
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [data.qa_record(r["question"], r["answer"]["value"], r["answer"]["aliases"], r["context"]) for r in raw]


@torch.no_grad()
def loglikelihoods(model, tokenizer, item) -> np.ndarray:
    """Sum of log-probs of each choice's tokens after the query, split as lm-eval splits a context/continuation
    pair: trailing whitespace of the query moves to the continuation, the pair is encoded whole and the
    continuation is the tokens after the context's own encoding."""
    context = item["query"].rstrip()
    context_ids = tokenizer.encode(context)
    lls = []
    for text in item["choices"]:
        ids = tokenizer.encode(context + item["query"][len(context):] + " " + text)
        logprobs = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        lls.append(sum(logprobs[k - 1, ids[k]].item() for k in range(len(context_ids), len(ids))))
    return np.array(lls)


def top_margin(scores: np.ndarray) -> float:
    top = np.sort(scores)[::-1]
    return float(top[0] - top[1])


@pytest.fixture(scope="module")
def scored(tiny, arc_items):
    """lm-eval's results on the ARC items and on the same items with the direct argmax as gold, plus the
    direct log-likelihoods."""
    model, tokenizer = tiny
    lls = [loglikelihoods(model, tokenizer, item) for item in arc_items]
    argmax_items = [{**item, "gold": int(np.argmax(ll))} for item, ll in zip(arc_items, lls)]
    out = choice.score(model, tokenizer, {"arc_easy": arc_items, "argmax": argmax_items}, batch_size=4)
    return out, lls


def test_score_equals_direct_loglikelihood_argmax(scored, arc_items):
    out, lls = scored
    assert list(out) == ["arc_easy", "argmax"] and all(len(v) == N_ITEMS for v in out.values())
    compared = 0
    for item, ll, got, top in zip(arc_items, lls, out["arc_easy"], out["argmax"]):
        lengths = np.array([len(c) for c in item["choices"]], dtype=float)  # lm-eval: characters of the choice
        if min(top_margin(ll), top_margin(ll / lengths)) < 1e-4:
            continue  # a near tie: batched and unbatched floats may pick differently
        compared += 1
        assert got == {"acc": int(np.argmax(ll) == item["gold"]), "acc_norm": int(np.argmax(ll / lengths) == item["gold"])}
        assert top == {"acc": 1, "acc_norm": int(np.argmax(ll / lengths) == np.argmax(ll))}
    assert compared >= N_ITEMS - 2


def test_score_limit_takes_the_first_items(tiny, arc_items, scored):
    model, tokenizer = tiny
    out = choice.score(model, tokenizer, {"arc_easy": arc_items[:4]}, batch_size=4, limit=2)
    assert out == {"arc_easy": scored[0]["arc_easy"][:2]}


def test_score_rejects_empty_or_invalid_tasks():
    with pytest.raises(ValueError, match="'empty': no items"):
        choice.score(None, None, {"empty": []}, batch_size=1)
    with pytest.raises(ValueError, match="'bad': gold"):
        choice.score(None, None, {"bad": [{"query": "Q", "choices": ["a", "b"], "gold": 2}]}, batch_size=1)


def test_from_qa_gold_once_at_shuffled_positions(qa_records):
    items = choice.from_qa(qa_records, n_choices=4, seed=0)
    assert len(items) == len(qa_records)
    for record, item in zip(qa_records, items):
        assert item["query"] == qa.prompt(record) == f"Question: {record['question']}\nAnswer:"
        assert len(item["choices"]) == 4 and choice.check_item(item) is None
        assert item["choices"][item["gold"]] == record["answer"]
        assert item["choices"].count(record["answer"]) == 1
    assert {item["gold"] for item in items} == {0, 1, 2, 3}


def test_from_qa_distractors_are_never_aliases_of_the_gold(qa_records):
    aliases_of: dict[str, set[str]] = {}
    for r in qa_records:
        aliases_of.setdefault(r["answer"], set()).update(map(qa.normalize, r["aliases"]))
    for record, item in zip(qa_records, choice.from_qa(qa_records, seed=3)):
        gold = set(map(qa.normalize, record["aliases"]))
        distractors = [c for k, c in enumerate(item["choices"]) if k != item["gold"]]
        assert len({qa.normalize(d) for d in distractors}) == 3
        assert all(not aliases_of[d] & gold for d in distractors), (record["question"], distractors)
    # e.g. Mercury the element never gets Mercury the planet, nor Newton the unit Isaac Newton
    assert [r["answer"] for r in qa_records].count("Mercury") == 2


def test_from_qa_is_deterministic_per_seed(qa_records):
    assert choice.from_qa(qa_records, seed=0) == choice.from_qa(qa_records, seed=0)
    assert choice.from_qa(qa_records, seed=0) != choice.from_qa(qa_records, seed=1)


def test_from_qa_distractors_are_of_the_same_kind(qa_records):
    items = choice.from_qa(qa_records, seed=0)
    capitals = {r["answer"] for r in qa_records if r["question"].startswith("What is the capital of")}
    years = {r["answer"] for r in qa_records if r["question"].startswith("In what year")}
    for record, item in zip(qa_records, items):
        q = record["question"]
        if q.startswith("What is the capital of"):
            assert set(item["choices"]) <= capitals
        if q.startswith("In what year"):
            assert set(item["choices"]) <= years
        if record["answer"].isdigit():
            assert all(c.replace(".", "").replace(",", "").isdigit() for c in item["choices"]), item["choices"]


def test_from_qa_needs_enough_distinct_answers(qa_records):
    with pytest.raises(ValueError, match="n_choices=1"):
        choice.from_qa(qa_records, n_choices=1)
    with pytest.raises(ValueError, match="distinct distractors"):
        choice.from_qa(qa_records[:3], n_choices=4)
    assert len(choice.from_qa(qa_records[:3], n_choices=3)) == 3


def test_read_items_reads_the_zeroshot_layout(shared_data, tmp_path):
    assert len(choice.read_items(shared_data / "zeroshot" / "arc_easy.jsonl")) == 2376
    path = tmp_path / "ok.jsonl"
    path.write_text('{"query": "Q", "choices": ["a", "b"], "gold": 1}\n\n', encoding="utf-8")
    assert choice.read_items(path) == [{"query": "Q", "choices": ["a", "b"], "gold": 1}]


@pytest.mark.parametrize("bad, message", [
    ("{not json", "not JSON"),
    ('{"query": "Q", "choices": ["a", "b"]}', "expected an object with query, choices and gold"),
    ('{"query": "Q", "choices": ["a"], "gold": 0}', "choices must be a list of at least 2"),
    ('{"query": "Q", "choices": ["a", "b"], "gold": 2}', "gold must be an index"),
    ('{"query": "Q", "choices": ["a", "b"], "gold": -1}', "gold must be an index"),
    ('{"query": "Q", "choices": ["a", "b"], "gold": true}', "gold must be an index"),
    ('{"query": "", "choices": ["a", "b"], "gold": 0}', "query must be"),
])
def test_read_items_errors_name_file_and_line(tmp_path, bad, message):
    path = tmp_path / "items.jsonl"
    path.write_text('{"query": "Q", "choices": ["a", "b"], "gold": 0}\n\n' + bad + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"items.jsonl:3: {message}"):
        choice.read_items(path)


def test_score_stock_orders_items_and_fills_acc_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    """lm-eval's own tasks by name (hub data, so lm-eval's run is replaced by its recorded output here): items in
    document order, acc_norm = acc where the task has none (BoolQ), chance from the number of choices."""
    samples = {"boolq": [{"doc_id": 1, "acc": 1.0, "arguments": [("q", " no"), ("q", " yes")]},
                         {"doc_id": 0, "acc": 0.0, "arguments": [("q", " no"), ("q", " yes")]}],
               "arc_easy": [{"doc_id": 0, "acc": 1.0, "acc_norm": 0.0, "arguments": [("q", c) for c in "abcd"]}]}
    calls = []

    def fake_run(model, tokenizer, tasks, task_manager, batch_size, max_length=None, limit=None):
        calls.append(tasks)
        return {"samples": samples}

    monkeypatch.setattr(choice.harness, "run", fake_run)
    out = choice.score_stock(None, None, ["boolq", "arc_easy"], batch_size=4)
    assert calls == [["boolq", "arc_easy"]]
    assert out["boolq"] == ([{"acc": 0, "acc_norm": 0}, {"acc": 1, "acc_norm": 1}], 0.5)
    assert out["arc_easy"] == ([{"acc": 1, "acc_norm": 0}], 0.25)


@pytest.mark.parametrize("max_length", [None, 40])
def test_batched_hflm_gives_stock_hflm_loglikelihoods(tiny, arc_items, max_length):
    """The batched log-likelihoods, packed by context and one row per request, equal lm-eval's own HFLM on the same
    requests (trailing spaces in the context, several batch sizes, contexts truncated to `max_length` differently
    per continuation), up to float32 noise from other shapes; the greedy flags are the same."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = tiny
    requests = [Instance("loglikelihood", {}, (item["query"] + " " * (k % 2), " " * (1 - k % 2) + text), k)
                for item in arc_items for k, text in enumerate(item["choices"])]
    requests.append(Instance("loglikelihood", {}, ("The", " the the the the"), 0))
    greedy = tokenizer.decode(model(torch.tensor([tokenizer.encode("The")])).logits[0, -1].argmax())
    requests += [Instance("loglikelihood", {}, ("The", greedy), 0)] * 2  # a greedy match, twice in one group
    stock = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=max_length).loglikelihood(
        requests, disable_tqdm=True)
    assert stock[-1][1] and len({round(ll, 3) for ll, _ in stock}) > len(requests) // 2  # the test can fail
    for grouped in (True, False):
        for batch_size in (1, 5, 64):
            lm = choice.harness.batched_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                                               max_length=max_length)
            lm.grouped = grouped
            got = lm.loglikelihood(requests, disable_tqdm=True)
            assert [g for _, g in got] == [g for _, g in stock]
            np.testing.assert_allclose([ll for ll, _ in got], [ll for ll, _ in stock], rtol=1e-6, atol=1e-4)


def test_batched_hflm_runs_each_context_once(tiny, arc_items):
    """Packed by context, the decoder runs each item's query once: fewer tokens than one row per request."""
    from lm_eval.api.instance import Instance

    model, tokenizer = tiny
    requests = [Instance("loglikelihood", {}, (item["query"], " " + text), k)
                for item in arc_items for k, text in enumerate(item["choices"])]
    tokens = []
    hook = model.get_decoder().register_forward_hook(lambda m, args, kwargs, out: tokens.append(
        int((kwargs.get("input_ids", args[0] if args else None)).numel())), with_kwargs=True)
    try:
        lm = choice.harness.batched_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=64)
        for grouped in (False, True):
            lm.grouped = grouped
            lm.loglikelihood(requests, disable_tqdm=True)
    finally:
        hook.remove()
    per_request, packed = tokens
    queries = sum(len(tokenizer.encode(item["query"])) for item in arc_items)
    assert per_request - packed >= 0.9 * queries * (sum(len(i["choices"]) for i in arc_items) / len(arc_items) - 1)


def test_harness_runs_the_batched_backend_unless_stock(tiny, monkeypatch):
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    backends = []
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda model, **kwargs: backends.append(type(model)))
    for stock in (False, True):
        choice.harness.run(*tiny, [], None, batch_size=2, stock=stock)
    assert backends == [choice.harness.batched_hflm(), HFLM]
