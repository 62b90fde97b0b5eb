"""KV-cache compression: the 16-bit cache reproduces the dense one exactly (every family, GQA), the quantized ones
come close, the grouping math by hand, the bytes formula against the stored tensors, eviction, and every bad
configuration refused before any work with the parameter named."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

from llmshrink import kv_cache, kv_quant, kv_study, models
from llmshrink.kv_cache import CacheConfig
from llmshrink.params import load
from llmshrink.params.kv import Kv

DIMS = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 256}  # GQA: 2 query heads per KV head, head size 16
KV = Kv(contexts=[64], windows=1, chunk=16, decode_tokens=2, context=None, baseline="bf16", deploy="bf16",
               configs={"bf16": {}})


@pytest.fixture(scope="module")
def llama(tiny_dir):
    return models.load(tiny_dir, "bfloat16")


def family(name: str, llama) -> torch.nn.Module:
    if name == "llama":
        return llama
    torch.manual_seed(0)
    cls, config = {"qwen2": (Qwen2ForCausalLM, Qwen2Config), "mistral": (MistralForCausalLM, MistralConfig)}[name]
    return cls(config(**DIMS)).to(torch.bfloat16).eval()


@torch.no_grad()
def chunked_logits(model, cache, ids: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    return torch.cat([model(ids[None, s : s + chunk], cache=cache, use_cache=True).logits
                      for s in range(0, len(ids), chunk)], dim=1)


def ids(n: int = 80) -> torch.Tensor:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral"])
def test_16_bit_cache_reproduces_the_dense_logits_exactly(name: str, llama) -> None:
    model = family(name, llama)
    layers = model.config.num_hidden_layers
    dense = chunked_logits(model, DynamicCache(), ids())
    assert torch.equal(chunked_logits(model, kv_quant.build(CacheConfig(), layers), ids()), dense)


def test_quantized_caches_come_close_int8_closest(llama) -> None:
    layers, x = llama.config.num_hidden_layers, ids()
    dense = chunked_logits(llama, DynamicCache(), x).float()
    err = {}
    for dtype in ("int8", "int4", "int2"):
        config = CacheConfig(dtype, keys="channel", values="token", group=8, residual=16)
        err[dtype] = (chunked_logits(llama, kv_quant.build(config, layers), x).float() - dense).abs().max().item()
    scale = dense.abs().max().item()
    assert 0 < err["int8"] < 0.02 * scale
    assert err["int8"] < err["int4"] < err["int2"]


def test_grouping_math_by_hand() -> None:
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0],
                      [4.0, 4.0, 8.0, 0.0]])[None, None]  # [B=1, H=1, T=2 tokens, D=4 channels]
    # per channel, groups of 2 tokens: each channel's min and (max - min) / 3 over its two tokens
    packed, scale, low = kv_quant.quantize(x, 2, 2, "channel")
    assert scale.shape == low.shape == (1, 1, 1, 1, 4)
    assert low.flatten().tolist() == [0.0, 1.0, 2.0, 0.0]
    assert scale.flatten().tolist() == pytest.approx([4 / 3, 1, 2, 1], rel=1e-3)
    # codes round((x - min) / scale): token 0 -> [0, 0, 0, 3], token 1 -> [3, 3, 3, 0]; 4 codes of 2 bits a byte
    assert packed.shape == (1, 1, 2, 1)
    assert packed.flatten().tolist() == [3 << 6, 3 | 3 << 2 | 3 << 4]
    assert torch.allclose(kv_quant.dequantize(packed, scale, low, 2, 2, "channel", torch.float32), x, atol=2e-3)
    # per token, groups of 2 channels: each token's pairs of channels
    packed, scale, low = kv_quant.quantize(x, 4, 2, "token")
    assert scale.shape == (1, 1, 2, 2, 1)
    assert low.flatten().tolist() == [0.0, 2.0, 4.0, 0.0]
    assert scale.flatten().tolist() == pytest.approx([1 / 15, 1 / 15, 0.0, 8 / 15], rel=1e-3)
    assert packed.shape == (1, 1, 2, 2)  # 2 codes of 4 bits a byte
    back = kv_quant.dequantize(packed, scale, low, 4, 2, "token", torch.float32)
    assert (back - x).abs().max() <= 8 / 15 / 2 + 1e-3


CONFIGS = [CacheConfig(), CacheConfig("fp8"), CacheConfig(sinks=4, window=20),
           CacheConfig("int8", keys="token", values="token", group=4, residual=0),
           CacheConfig("int4", keys="channel", values="token", group=8, residual=16),
           CacheConfig("int2", keys="channel", values="channel", group=16, residual=5)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.dtype}-{c.keys}-{c.window}")
def test_cache_bytes_formula_matches_the_stored_tensors(config: CacheConfig, llama) -> None:
    cache = kv_quant.build(config, llama.config.num_hidden_layers)
    for tokens in (16, 37, 38, 60):  # chunks of up to 16 tokens and one decode step, ending in partial groups
        with torch.no_grad():
            while cache.get_seq_length() < tokens:
                step = min(16, tokens - cache.get_seq_length())
                llama.get_decoder()(ids(step)[None], cache=cache, use_cache=True)
        assert kv_quant.stored_bytes(cache) == kv_cache.cache_bytes(config, tokens, llama.config.to_dict())
    # bf16 at 60 tokens: 8 layers x (K, V) x 2 heads x 16 channels x 60 tokens x 2 bytes
    assert kv_cache.cache_bytes(CacheConfig(), 60, llama.config.to_dict()) == 8 * 2 * 2 * 16 * 60 * 2


def test_eviction_keeps_the_sinks_and_the_recent_window(llama) -> None:
    x, layers = ids(), llama.config.num_hidden_layers
    dense, evicting = DynamicCache(), kv_quant.build(CacheConfig(sinks=4, window=20), layers)
    chunked_logits(llama, dense, x)
    chunked_logits(llama, evicting, x)
    kept = torch.cat([dense.layers[0].keys[:, :, :4], dense.layers[0].keys[:, :, -20:]], dim=2)
    assert torch.equal(evicting.layers[0].keys, kept)
    assert evicting.get_seq_length() == 80
    assert evicting.layers[0].get_mask_sizes(1) == (25, 80 - 24)


def test_bad_configurations_are_refused_with_the_parameter_named() -> None:
    config = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64,
              "max_position_embeddings": 128}

    def refused(match: str, **changes) -> None:
        if "configs" in changes:
            changes["configs"] = {"bf16": {}, **changes["configs"]}
        with pytest.raises(ValueError, match=match):
            kv_cache.configs(dataclasses.replace(KV, **changes), config)

    refused(r"kv.configs.x.dtype='int3' is not allowed; choose one of \['bf16', 'fp8', 'int8', 'int4', 'int2'\]",
            configs={"x": {"dtype": "int3"}})
    refused(r"kv.configs.x.keys='row' is not allowed", configs={"x": {"dtype": "int4", "keys": "row"}})
    refused(r"kv.configs.x.group=32 must divide the head size 16.*allowed \[1, 2, 4, 8, 16\]",
            configs={"x": {"dtype": "int4", "group": 32}})
    refused(r"kv.configs.x: sinks \+ window = 68 keeps the whole of kv.contexts=64 tokens; allowed sinks \+ window < 64",
            configs={"x": {"sinks": 4, "window": 64}})
    refused(r"kv.configs.x.window applies only to dtype bf16", configs={"x": {"dtype": "int4", "window": 8}})
    refused(r"kv.configs.x.residual applies only to an integer dtype", configs={"x": {"dtype": "fp8", "residual": 8}})
    refused(r"kv.configs.x.sinks needs kv.configs.x.window", configs={"x": {"sinks": 4}})
    refused(r"kv.configs.x.bits is not a key", configs={"x": {"bits": 4}})
    refused(r"kv.contexts=\[256\]: 256 exceeds the model's 128 positions", contexts=(256,))
    refused(r"kv.contexts=\[40\]: 40 is not a multiple of kv.chunk=16", contexts=(40,))
    with pytest.raises(ValueError, match=r"kv.baseline='int4' is not allowed; choose one of \['bf16'\]"):
        dataclasses.replace(KV, baseline="int4")
    assert kv_cache.configs(KV, config) == {"bf16": CacheConfig()}


def test_study_and_summarize_on_the_tiny_model(llama) -> None:
    configs = {"bf16": CacheConfig(), "int4": CacheConfig("int4", group=8, residual=16)}
    texts = {32: [ids(32), ids(64)[32:]], 64: [ids(64)]}
    raw = kv_study.study(llama, configs, texts, 16, 2)
    summary = kv_study.summarize(raw, configs, "bf16", llama.config.to_dict(), 2048, seed=0)
    base, int4 = summary["bf16"], summary["int4"]
    assert base["config"] == {"dtype": "bf16"} and set(int4["config"]) == {"dtype", "keys", "values", "group", "residual"}
    assert base["contexts"]["32"]["items"] == 2 and base["contexts"]["64"]["items"] == 3  # every chunk but the first
    assert base["ppl"] == base["contexts"]["64"]["ppl"] and base["ci95"][0] <= base["ppl"] <= base["ci95"][1]
    assert base["contexts"]["64"]["delta_ppl"] == 0 and not base["contexts"]["64"]["significantly_worse"]
    assert int4["cache_bytes"] == int4["contexts"]["64"]["cache_bytes_formula"] < base["cache_bytes"]
    assert int4["deploy_cache_bytes"] < base["deploy_cache_bytes"]
    assert int4["contexts"]["64"]["decode_vs_baseline"] > 0 and int4["contexts"]["64"]["peak_bytes"] >= 0
    table = kv_study.markdown(summary, "bf16")
    assert table.count("\n") == 2 + 4 and "| int4 | 64 |" in table


def test_the_full_profile_applies_as_dvc_does_and_fits_the_embedded_model(tmp_path) -> None:
    from dvc.utils.hydra import apply_overrides

    root = Path(__file__).resolve().parents[1]
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(str(tmp_path / "params.yaml"), (root / "profiles" / "kv_full.txt").read_text().split())
    p = load(Kv, tmp_path / "params.yaml")
    smollm2 = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576,
               "max_position_embeddings": 8192}
    assert p.contexts == (2048, 4096, 8192) and len(kv_cache.configs(p, smollm2)) > len(load(Kv).configs)
    # the figure: a bf16 cache of 8,192 tokens is 189 MB
    assert kv_cache.cache_bytes(CacheConfig(), 8192, smollm2) == 188_743_680
