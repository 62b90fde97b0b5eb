"""Perplexity, size, speed, dtype choice, lm-eval on local files, and the evaluate stage end to end."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from transformers import AutoTokenizer

from llmshrink import evaluate, harness, models
from llmshrink.calib import tokenize

ROOT = Path(__file__).resolve().parents[1]
EVAL = yaml.safe_load((ROOT / "params.yaml").read_text())["eval"]


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return models.load(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)


def test_windows_count_every_token_once():
    ids = torch.arange(11)
    chunks = evaluate.windows(ids, 4)
    assert [len(c) for c in chunks] == [4, 4, 3]
    assert torch.equal(torch.cat(chunks), ids)
    assert len(evaluate.windows(ids, 4, max_windows=2)) == 2
    assert [len(c) for c in evaluate.windows(torch.arange(9), 4)] == [4, 4]  # a 1-token tail predicts nothing


def test_perplexity_equals_a_manual_loop(tiny, prose):
    model, tokenizer = tiny
    text = prose[:3000]
    out = evaluate.text_perplexity(model, tokenizer, text, seq_len=64, batch_size=3, max_windows=None)
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in tokenize(tokenizer, text).split(64):
            logp = torch.log_softmax(model(w[None]).logits[0, :-1].double(), dim=-1)
            nll -= logp.gather(1, w[1:, None]).sum().item()
            count += len(w) - 1
    assert out["tokens"] == count and out["windows"] == math.ceil(len(tokenize(tokenizer, text)) / 64)
    assert out["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-4)


def test_check_params_names_the_bad_parameter():
    assert evaluate.check_params(dict(EVAL)) == EVAL
    for key, bad, named in [("dtype", "float16", "eval.dtype"), ("limit", 0, "eval.limit"),
                            ("seq_len", 1, "eval.seq_len"), ("lm_eval", "yes", "eval.lm_eval"),
                            ("max_windows", 2.5, "eval.max_windows"), ("batch_size", 0, "eval.batch_size")]:
        with pytest.raises(ValueError, match=re.escape(named)):
            evaluate.check_params({**EVAL, key: bad})


def test_auto_dtype_follows_cpu_flags(tmp_path):
    with_amx, without = tmp_path / "amx", tmp_path / "plain"
    with_amx.write_text("flags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    without.write_text("flags\t\t: fpu sse avx512f avx512_vnni\n")
    assert evaluate.cpu_has_bf16(with_amx) and not evaluate.cpu_has_bf16(without)
    assert not evaluate.cpu_has_bf16(tmp_path / "missing")
    cpu = torch.device("cpu")
    assert evaluate.resolve_dtype("float32", cpu) == "float32"
    assert evaluate.resolve_dtype("auto", cpu) == ("bfloat16" if evaluate.cpu_has_bf16() else "float32")


def test_size_counts_unique_and_nonzero_parameters(tiny_dir):
    model = models.load(tiny_dir)
    c = model.config
    h, kv = c.hidden_size, c.num_key_value_heads * c.hidden_size // c.num_attention_heads
    layer = 2 * h * h + 2 * h * kv + 3 * h * c.intermediate_size + 2 * h
    size = evaluate.model_size(model, tiny_dir)
    assert size["params"] == c.vocab_size * h + c.num_hidden_layers * layer + h  # tied lm_head counted once
    assert size["weight_bytes_fp16"] == 2 * size["params"]
    assert size["disk_bytes"] == sum(f.stat().st_size for f in tiny_dir.iterdir())
    with torch.no_grad():
        w = model.model.layers[0].mlp.down_proj.weight
        w[:, :10] = 0.0
    assert evaluate.model_size(model, tiny_dir)["params_nonzero"] == size["params_nonzero"] - int(
        torch.count_nonzero(models.load(tiny_dir).model.layers[0].mlp.down_proj.weight[:, :10]))


class FakeQuantLinear(torch.nn.Module):
    """A GPTQ-like layer: packed buffers, a logical 8 x 16 weight with 10 zeros, a bias and EoRA factors
    on its adapter, as GPTQModel keeps them."""

    in_features, out_features = 16, 8

    def __init__(self):
        super().__init__()
        self.register_buffer("qweight", torch.ones(2, 8, dtype=torch.int32))
        self.register_buffer("scales", torch.ones(1, 8))
        self.register_buffer("bias", torch.ones(8))
        self.adapter = SimpleNamespace(lora_A=torch.ones(16, 2), lora_B=torch.ones(2, 8))

    def dequantize_weight(self):
        w = torch.ones(16, 8)
        w.view(-1)[:10] = 0
        return w


def test_size_counts_quantized_layers_logically(tmp_path):
    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), FakeQuantLinear())
    (tmp_path / "model.safetensors").write_bytes(b"x" * 123)
    size = evaluate.model_size(model, tmp_path)
    assert size["params"] == 5 * 4 + 16 * 8 + 8 + 16 * 2 + 2 * 8
    assert size["params_nonzero"] == size["params"] - 10 - int((model[0].weight == 0).sum())
    assert size["disk_bytes"] == 123


def test_speed_reports_positive_throughput(tiny):
    model, _ = tiny
    out = evaluate.speed(model, prompt_tokens=16, new_tokens=4)
    assert out["prefill_tok_s"] > 0 and out["decode_tok_s"] > 0 and out["device"] == "cpu"
    assert (out["prompt_tokens"], out["new_tokens"]) == (16, 4)


def test_lm_eval_wikitext_on_local_text_matches_our_loglikelihood(tiny):
    """lm-eval's own `wikitext` task, offline on a local document: word perplexity = exp(NLL / words),
    the NLL of the whole document after lm-eval's prefix token (BOS, else EOS)."""
    model, tokenizer = tiny
    page = "The cat sat on the mat and looked at the garden. It was a quiet afternoon in the old town."
    out = harness.wikitext(model, tokenizer, page, batch_size=1, max_length=128)
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([prefix] + tokenize(tokenizer, page).tolist())
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[None]).logits[0, :-1].double(), dim=-1)
    nll = -logp.gather(1, ids[1:, None]).sum().item()
    assert out["lm_eval_word_perplexity"] == pytest.approx(math.exp(nll / len(page.split())), rel=1e-3)
    assert out["lm_eval_byte_perplexity"] == pytest.approx(math.exp(nll / len(page.encode())), rel=1e-3)


def test_evaluate_stage_end_to_end(tiny_dir, tmp_path, prose):
    shutil.copytree(tiny_dir, tmp_path / "models" / "tiny")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "perplexity.txt").write_text(prose[:20000])
    records = [{"question": "What is the capital of France?", "answer": "Paris", "aliases": ["Paris"],
                "context": "Paris is the capital and largest city of France."},
               {"question": "Who wrote Hamlet?", "answer": "Shakespeare", "aliases": ["Shakespeare"], "context": None}]
    (tmp_path / "data" / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    params = {"eval": {**EVAL, "seq_len": 64, "max_windows": 5, "limit": 2, "max_new_tokens": 4,
                       "speed_prompt_tokens": 16, "speed_new_tokens": 4}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run([sys.executable, str(ROOT / "stages" / "evaluate.py"), "tiny"], cwd=tmp_path, check=True)
    m = json.loads((tmp_path / "metrics" / "eval" / "tiny.json").read_text())
    assert m["wikitext"]["tokens"] == 5 * 63 and m["wikitext"]["ppl"] > 1
    assert m["triviaqa"]["n"] == 2 and 0 <= m["triviaqa"]["exact_match"] <= m["triviaqa"]["match"] <= 1
    assert m["triviaqa"]["open_n"] == 1 and 0 <= m["triviaqa"]["open_exact_match"] <= 1
    assert m["size"]["params"] >= m["size"]["params_nonzero"] > 0
    assert m["size"]["disk_bytes"] > 0 and m["size"]["weight_bytes_fp16"] == 2 * m["size"]["params"]
    assert m["speed"]["prefill_tok_s"] > 0 and m["speed"]["decode_tok_s"] > 0 and m["speed"]["device"] == "cpu"
    assert m["dtype"] in ("float32", "bfloat16")


def test_evaluate_stage_refuses_bad_params_before_writing(tiny_dir, tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"eval": {**EVAL, "dtype": "int8"}}))
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "evaluate.py"), "tiny"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode != 0 and "eval.dtype" in done.stderr
    assert not (tmp_path / "metrics").exists()
