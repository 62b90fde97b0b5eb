"""TriviaQA matching, prompts and batched generation."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from llmshrink import models, qa

PARIS = {"question": "What is the capital of France?", "answer": "Paris", "aliases": ["Paris", "Paris, France"], "context": None}
LONDON = {"question": "What is the capital of England?", "answer": "London", "aliases": ["London"], "context": None}


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return models.load(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)


def test_normalize_lowercases_strips_punctuation_articles_and_spaces():
    assert qa.normalize("  The  Beatles! ") == "beatles"
    assert qa.normalize("A Tale of Two Cities.") == "tale of two cities"
    assert qa.normalize("AC/DC, an “Australian” band") == "acdc australian band"
    assert qa.normalize("Theresa May") == "theresa may"  # "the" only as a whole word


@pytest.mark.parametrize("answer, aliases, exact, matched", [
    ("Paris", ["Paris"], True, True),
    ("paris.", ["Paris"], True, True),                                # case, punctuation
    ("The Beatles", ["Beatles"], True, True),                         # articles
    ("William Shakespeare", ["Shakespeare", "William Shakespeare"], True, True),  # any alias
    ("It is Paris, of course", ["Paris"], False, True),               # alias inside the answer
    ("the river thames in london", ["River Thames"], False, True),
    ("John Fitzgerald Kennedy was", ["John F Kennedy Junior Senior"], False, False),  # 2 of 5 words
    ("Kennedy John Fitzgerald", ["John Fitzgerald Kennedy Jr"], False, False),  # 3 of 4 words: 75% < 80%
    ("Leonardo da Vinci painter", ["Leonardo di ser Piero da Vinci"], False, False),  # 3 of 6 words
    ("Lyon", ["Paris"], False, False),
    ("Parisian", ["Paris"], False, False),                            # no partial words
    ("", ["Paris"], False, False),
    ("anything", ["The"], False, False),                              # an alias that normalizes to nothing
])
def test_matchers(answer, aliases, exact, matched):
    assert qa.exact_match(answer, aliases) is exact
    assert qa.match(answer, aliases) is matched


def test_word_overlap_tier_at_80_percent():
    alias = ["one two three four five"]
    assert qa.match("five four three two", alias)         # 4 of 5 words: 80%
    assert not qa.match("five four three", alias)         # 3 of 5 words: 60%
    assert not qa.exact_match("five four three two", alias)


def test_score_is_per_record():
    assert qa.score(["Paris", "Paris, of course", "Rome"], [PARIS, PARIS, LONDON]) == {
        "exact_match": [1, 0, 0], "match": [1, 1, 0]}


def test_prompts():
    assert qa.prompt(PARIS) == "Question: What is the capital of France?\nAnswer:"
    record = {**PARIS, "context": "Paris is the capital of France."}
    assert qa.prompt(record, open_book=True) == (
        "Context: Paris is the capital of France.\n\nQuestion: What is the capital of France?\nAnswer:")


def test_chat_template_wraps_the_prompt(tiny):
    _, tokenizer = tiny
    text = qa.chat(tokenizer, qa.prompt(PARIS))
    assert qa.prompt(PARIS) in text and text.endswith("<|im_start|>assistant\n")


def forced(tiny_dir, token_id: int):
    """The tiny model with an untied lm_head that always predicts `token_id`."""
    model = models.load(tiny_dir)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.zero_()
        head.bias[token_id] = 10.0
    model.lm_head = head
    return model


def test_model_forced_to_answer_an_alias_scores_exact_match_one(tiny_dir, tiny):
    _, tokenizer = tiny
    (paris_id,) = tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    model = forced(tiny_dir, paris_id)
    records = [PARIS, {**PARIS, "question": "Which city hosts the Louvre museum in its first arrondissement?"},
               {**PARIS, "question": "Capital?"}]
    out = qa.triviaqa(model, tokenizer, records, max_new_tokens=1, batch_size=2)
    assert out["exact_match"] == 1.0 and out["match"] == 1.0 and out["n"] == 3
    assert out["open_exact_match"] is None and out["open_n"] == 0
    assert qa.triviaqa(model, tokenizer, [PARIS, LONDON, PARIS], 1, 2)["exact_match"] == pytest.approx(2 / 3)
    # "Paris Paris Paris" is no exact match, but contains the alias
    longer = qa.triviaqa(model, tokenizer, [PARIS], max_new_tokens=3, batch_size=2, limit=1)
    assert longer["exact_match"] == 0.0 and longer["match"] == 1.0


def test_open_book_uses_contexts_and_limit(tiny_dir, tiny):
    _, tokenizer = tiny
    (paris_id,) = tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    records = [{**PARIS, "context": "Paris is the capital of France."}, LONDON, PARIS, LONDON]
    out = qa.triviaqa(forced(tiny_dir, paris_id), tokenizer, records, 1, 4, limit=3)
    assert out["n"] == 3 and out["exact_match"] == pytest.approx(2 / 3)
    assert out["open_n"] == 1 and out["open_exact_match"] == 1.0
    assert out["items"] == {"exact_match": [1, 0, 1], "match": [1, 0, 1], "open_exact_match": [1], "open_match": [1]}


class StubLM:
    """Answers each question with its record's last alias, then a newline and more text."""

    device = torch.device("cpu")

    def __init__(self, tokenizer, records):
        self.tokenizer, self.answers = tokenizer, {r["question"]: r["aliases"][-1] for r in records}

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        rows = []
        for ids in input_ids:
            prompt = self.tokenizer.decode(ids, skip_special_tokens=True)
            question = prompt.split("Question: ")[-1].split("\nAnswer:")[0]
            new = self.tokenizer(f" {self.answers[question]}\nQuestion: next", add_special_tokens=False)["input_ids"]
            rows.append(ids.tolist() + new[:max_new_tokens])
        width = max(map(len, rows))
        return torch.tensor([r + [self.tokenizer.eos_token_id] * (width - len(r)) for r in rows])


def test_stub_answering_aliases_scores_one_and_stops_at_newline(tiny):
    _, tokenizer = tiny
    records = [PARIS, LONDON, {"question": "Who wrote Hamlet?", "answer": "Shakespeare",
                               "aliases": ["Shakespeare", "William Shakespeare"], "context": None}]
    stub = StubLM(tokenizer, records)
    prompts = [qa.prompt(r) for r in records]
    assert qa.generate(stub, tokenizer, prompts, 16, 2) == ["Paris, France", "London", "William Shakespeare"]
    out = qa.triviaqa(stub, tokenizer, records, max_new_tokens=16, batch_size=2)
    assert out["exact_match"] == 1.0 and out["match"] == 1.0


def test_left_padded_batches_give_the_unbatched_answers(tiny):
    model, tokenizer = tiny
    prompts = [qa.prompt({"question": q}) for q in
               ["Who?", "Which river flows through Paris?", "Name the largest planet of the solar system, please?",
                "What is 2+2?", "Where is the Eiffel Tower located in Europe?"]]
    one = qa.generate(model, tokenizer, prompts, max_new_tokens=5, batch_size=1)
    assert qa.generate(model, tokenizer, prompts, max_new_tokens=5, batch_size=5) == one
    assert tokenizer.padding_side == "right"  # restored


def test_answer_is_first_non_empty_line():
    assert qa.first_line("\n Paris\nQuestion: next") == "Paris"
    assert qa.first_line("  London  ") == "London"
    assert qa.first_line("\n\n") == ""
