"""Perplexity, size, speed (benchmark), dtype choice, lm-eval on local files, and the evaluate stage end to end."""
from __future__ import annotations

import json
import os
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

from llmshrink import benchmark, evaluate, hardware, harness, models, perplexity
from llmshrink.calib import tokenize
from llmshrink.params import read
from llmshrink.params.evaluation import Eval

ROOT = Path(__file__).resolve().parents[1]
EVAL = read(ROOT / "params.yaml")["eval"]
STAGE_ARGS = ["models/tiny", "data", "results/reference.safetensors", "metrics/eval/tiny.json", "results/tiny.json"]


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return models.load(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)


def test_windows_all_tokens_count_every_token_once():
    ids = torch.arange(11)
    chunks = perplexity.windows(ids, 4, protocol="all_tokens")
    assert [len(c) for c in chunks] == [4, 4, 3]
    assert torch.equal(torch.cat(chunks), ids)
    assert len(perplexity.windows(ids, 4, max_windows=2, protocol="all_tokens")) == 2
    assert [len(c) for c in perplexity.windows(torch.arange(9), 4, protocol="all_tokens")] == [4, 4]  # 1-token tail
    assert [len(c) for c in perplexity.windows(ids, 4)] == [4, 4]  # standard: the short tail dropped


def test_standard_protocol_matches_the_reference_evaluation(tiny_dir, tiny, prose):
    """The GPTQ/WANDA evaluation: `tokenizer(text)` once (a tokenizer that adds a BOS, as LLaMA's do), nsamples =
    numel // seqlen full windows, the tail dropped, NLL averaged over every predicted token."""
    model, _ = tiny
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir, add_bos_token=True)
    text, seq_len = prose[:3000], 64
    testenc = tokenizer(text, return_tensors="pt").input_ids
    nsamples = testenc.numel() // seq_len
    reference = [testenc[:, i * seq_len : (i + 1) * seq_len] for i in range(nsamples)]
    chunks = perplexity.windows(testenc[0], seq_len)
    assert len(chunks) == nsamples and testenc.numel() % seq_len
    assert all(torch.equal(c, r[0]) for c, r in zip(chunks, reference))
    assert chunks[0][0] == tokenizer.bos_token_id and (testenc == tokenizer.bos_token_id).sum() == 1
    out = perplexity.text_perplexity(model, tokenizer, text, seq_len=seq_len, batch_size=3)
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in reference:
            logp = torch.log_softmax(model(w).logits[0, :-1].double(), dim=-1)
            nll -= logp.gather(1, w[0, 1:, None]).sum().item()
            count += seq_len - 1
    assert (out["protocol"], out["windows"], out["tokens"]) == ("standard", nsamples, count)
    assert out["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert len(out["window_nll"]) == nsamples and sum(out["window_tokens"]) == count


def test_all_tokens_protocol_equals_a_manual_loop(tiny, prose):
    model, tokenizer = tiny
    text = prose[:3000]
    out = perplexity.text_perplexity(model, tokenizer, text, seq_len=64, batch_size=3, protocol="all_tokens")
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in tokenize(tokenizer, text).split(64):
            logp = torch.log_softmax(model(w[None]).logits[0, :-1].double(), dim=-1)
            nll -= logp.gather(1, w[1:, None]).sum().item()
            count += len(w) - 1
    assert out["tokens"] == count and out["windows"] == math.ceil(len(tokenize(tokenizer, text)) / 64)
    assert out["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-4) and out["protocol"] == "all_tokens"
    with pytest.raises(ValueError, match="protocol='rolling'"):
        perplexity.text_perplexity(model, tokenizer, text, 64, 3, protocol="rolling")


def test_eval_params_name_the_bad_parameter():
    e = Eval(**EVAL)
    assert {k: getattr(e, k) for k in EVAL} == {**EVAL, "choice_tasks": tuple(EVAL["choice_tasks"])}
    for key, bad, named in [("dtype", "int8", "eval.dtype"), ("limit", 0, "eval.limit"), ("choice_tasks", "piqa", "eval.choice_tasks"),
                            ("seq_len", 1, "eval.seq_len"), ("lm_eval", "yes", "eval.lm_eval"),
                            ("max_windows", 2.5, "eval.max_windows"), ("batch_size", 0, "eval.batch_size")]:
        with pytest.raises(ValueError, match=re.escape(named)):
            Eval(**{**EVAL, key: bad})


def test_auto_dtype_is_the_faster_one_on_cpu_measured_once(monkeypatch, tmp_path):
    cpu = torch.device("cpu")
    monkeypatch.setenv("LLMSHRINK_CACHE", str(tmp_path))
    monkeypatch.delenv(hardware.CPU_DTYPE, raising=False)
    assert hardware.resolve_dtype("float32", cpu) == "float32"
    assert hardware.resolve_dtype("bfloat16", cpu) == "bfloat16"
    assert hardware.work_dtype(cpu) == "float32" and hardware.autocast_dtype(cpu) is None
    for bf16, fp32, want in [(300.0, 100.0, "bfloat16"), (162.0, 297.0, "float32"), (105.0, 100.0, "float32")]:
        monkeypatch.setattr(hardware, "matmul_gflops", lambda dtype, reps=3: bf16 if dtype == torch.bfloat16 else fp32)
        (tmp_path / "cpu_dtype.json").unlink(missing_ok=True)
        hardware.fastest_cpu_dtype.cache_clear()
        assert hardware.resolve_dtype("auto", cpu) == want, (bf16, fp32)
        # a later process on this machine keeps the choice whatever the load: the measurement is not repeated
        monkeypatch.setattr(hardware, "matmul_gflops", lambda dtype, reps=3: 1 / 0)
        hardware.fastest_cpu_dtype.cache_clear()
        assert hardware.resolve_dtype("auto", cpu) == want
    monkeypatch.setenv(hardware.CPU_DTYPE, "float32")
    hardware.fastest_cpu_dtype.cache_clear()
    assert hardware.resolve_dtype("auto", cpu) == "float32"
    monkeypatch.setenv(hardware.CPU_DTYPE, "fp8")
    hardware.fastest_cpu_dtype.cache_clear()
    with pytest.raises(ValueError, match="LLMSHRINK_CPU_DTYPE='fp8'.*bfloat16, float32"):
        hardware.resolve_dtype("auto", cpu)
    hardware.fastest_cpu_dtype.cache_clear()


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


def test_speed_reports_positive_throughput(tiny_dir):
    """Speed moved out of the evaluate stage into the side-by-side benchmark."""
    out = benchmark.run({"base": tiny_dir, "again": tiny_dir}, "float32", rounds=2, prompt_tokens=16, new_tokens=4,
                        batch_sizes=[1, 2])
    assert out["settings"]["device"] == "cpu" and out["settings"]["baseline"] == "base"
    assert (out["settings"]["prompt_tokens"], out["settings"]["new_tokens"]) == (16, 4)
    for name, r in out["checkpoints"].items():
        for key in ("prefill_tok_s", "decode_tok_s", "prefill_tok_s_b2", "decode_tok_s_b2"):
            assert r[key] > 0, (name, key)
        assert r["spread"]["decode_tok_s"]["min"] <= r["decode_tok_s"] <= r["spread"]["decode_tok_s"]["max"]
        assert r["dtype"] == "float32"
    base = out["checkpoints"]["base"]
    assert base["prefill_vs_base"] == base["decode_vs_base"] == 1.0


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
    texts = {"prose": {"domain": "in", "dataset": "pydoc", "text": prose[:20000]},
             "other": {"domain": "out", "dataset": "pydoc, later", "text": prose[-20000:]}}
    (tmp_path / "data" / "perplexity.json").write_text(json.dumps(texts))
    records = [{"question": "What is the capital of France?", "answer": "Paris", "aliases": ["Paris"],
                "context": "Paris is the capital and largest city of France."},
               {"question": "Who wrote Hamlet?", "answer": "Shakespeare", "aliases": ["Shakespeare"], "context": None}]
    (tmp_path / "data" / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    items = [{"query": "Question: 2 + 2 =", "choices": ["4", "5", "22"], "gold": 0},
             {"query": "Question: The sky is", "choices": ["blue", "green"], "gold": 0}]
    (tmp_path / "data" / "choice.json").write_text(json.dumps({"toy": {"dataset": "toy", "items": items}}))
    p = {"seed": 0, "eval": {**EVAL, "seq_len": 64, "max_windows": 5, "limit": 2, "max_new_tokens": 4}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    subprocess.run([sys.executable, "-m", "stages.reference", "models/tiny", "data/perplexity.json",
                    "results/reference.safetensors"], cwd=tmp_path, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    subprocess.run([sys.executable, str(ROOT / "stages" / "evaluate.py"), *STAGE_ARGS], cwd=tmp_path, check=True)
    m = json.loads((tmp_path / "metrics" / "eval" / "tiny.json").read_text())
    assert m["kl"]["other"]["mean"] == 0 and m["kl"]["other"]["tokens"] == 5 * 63  # the base against itself
    for name, domain in (("prose", "in"), ("other", "out")):
        t = m["perplexity"][name]
        assert t["tokens"] == 5 * 63 and t["domain"] == domain and t["protocol"] == "standard"
        assert t["ci95"][0] <= t["ppl"] <= t["ci95"][1]
    assert m["qa"]["n"] == 2 and 0 <= m["qa"]["exact_match"] <= m["qa"]["match"] <= 1 and len(m["qa"]["ci95"]) == 2
    assert m["qa"]["open_n"] == 1 and 0 <= m["qa"]["open_exact_match"] <= 1
    toy = m["choice"]["toy"]
    assert toy["n"] == 2 and toy["acc"] in (0, 0.5, 1) and toy["chance"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert m["size"]["params"] >= m["size"]["params_nonzero"] > 0
    assert m["size"]["disk_bytes"] > 0 and m["size"]["weight_bytes_fp16"] == 2 * m["size"]["params"]
    assert "speed" not in m  # measured side by side by the benchmark stage
    per_item = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert len(per_item["perplexity"]["prose"]["nll"]) == 5 and len(per_item["choice"]["toy"]["acc"]) == 2
    assert sum(per_item["qa"]["exact_match"]) / 2 == m["qa"]["exact_match"]


def test_evaluate_stage_refuses_bad_params_before_writing(tiny_dir, tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"eval": {**EVAL, "dtype": "int8"}}))
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "evaluate.py"), *STAGE_ARGS], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode != 0 and "eval.dtype" in done.stderr
    assert not (tmp_path / "metrics").exists()
