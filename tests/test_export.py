"""GGUF export: a pruned tiny model (fewer layers, a narrower MLP) through llama.cpp's converter (and, where `make
edge` built it, its quantizer), loaded back with transformers: weights within each type's rounding bound, logits
exact for F16, byte-identical reruns."""
from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
import torch

from llmshrink import depth, export, family, gguf_files, llamacpp, models
from llmshrink.calib import tokenize
from llmshrink.params.gguf import CONVERTER_TYPES, Export, KquantBase
from llmshrink.perplexity import windows

BLOCK = 32  # Q8_0 and Q4_0 blocks: 32 consecutive inputs of a row, one float16 scale d each
# Per weight |dequantized - original| <= factor * (largest |w| of its block): Q8_0 rounds to d/2 with d = amax/127
# (d stored in float16 adds at most 127 * d * 2^-11); Q4_0's d = (signed max)/-8 maps the other end to at most
# 7|d|, so a weight of the opposite sign to the max can be off by up to |d| = amax/8.
WEIGHT_BOUND = {"f16": 0.0, "q8_0": 0.57 / 127, "q4_0": 1.01 / 8}
QUANTIZER = llamacpp.tool("llama-quantize").is_file()  # q4_0 is llama-quantize's, built by `make edge`
TYPES = [t for t in WEIGHT_BOUND if t in CONVERTER_TYPES or QUANTIZER]
# max |logit difference| / max |logit| over four held-out windows (measured on this random model: q8_0 0.011,
# q4_0 0.16; its Gaussian weights are harder on 4 bits than trained ones)
LOGIT_BOUND = {"f16": 0.0, "q8_0": 0.02, "q4_0": 0.3}


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Path:
    """The tiny model with layers 2 and 5 removed and its MLP cut from 128 to 96 channels, weights rounded to
    float16 values (so that F16 must be exact) and stored in float32."""
    model = models.load(tiny_dir)
    depth.prune(model, [2, 5])
    keep = torch.arange(96)
    for layer in family.layers(model):
        mlp = layer.mlp
        for proj, dim in ((mlp.gate_proj, 0), (mlp.up_proj, 0), (mlp.down_proj, 1)):
            proj.weight = torch.nn.Parameter(proj.weight.index_select(dim, keep))
            proj.in_features, proj.out_features = proj.weight.shape[1], proj.weight.shape[0]
    model.config.intermediate_size = 96
    model.half().float()
    path = tmp_path_factory.mktemp("pruned")
    models.save(model, models.load_tokenizer(tiny_dir), path, "float32")
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, pruned_dir: Path) -> dict[str, tuple[Path, dict]]:
    work = tmp_path_factory.mktemp("export")
    return {t: (work / t, export.to_gguf(pruned_dir, work / t, t)) for t in TYPES}


@pytest.fixture
def gguf_parses(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """The arguments of every GGUF file parse (gguf's `GGUFReader`) from here on."""
    import gguf

    parses, init = [], gguf.GGUFReader.__init__
    monkeypatch.setattr(gguf.GGUFReader, "__init__", lambda self, *a, **k: parses.append(a) or init(self, *a, **k))
    return parses


@pytest.fixture(scope="module")
def heldout(pruned_dir: Path, prose: str) -> torch.Tensor:
    return torch.stack(windows(tokenize(models.load_tokenizer(pruned_dir), prose[-20_000:]), 128)[:4])


@torch.no_grad()
@pytest.mark.parametrize("file_type", TYPES)
def test_gguf_loads_back_within_the_types_bound(file_type: str, exported: dict, pruned_dir: Path,
                                                 heldout: torch.Tensor) -> None:
    out, metrics = exported[file_type]
    assert sorted(p.name for p in out.iterdir()) == [export.GGUF_NAME] and gguf_files.gguf_file(out) == export.GGUF_NAME
    assert metrics["bytes"] == models.dir_bytes(out) and metrics["layers"] == 6 and metrics["chat_template"]
    quantized = {"f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}[file_type]
    # llama-quantize's output matrix (the tied embedding): Q6_K, Q8_0 where rows do not divide into 256
    assert set(metrics["tensor_types"]) == {"F32", quantized} | ({"Q8_0"} if file_type == "q4_0" else set())
    dense, gguf = models.load(pruned_dir), models.load(out)  # reading a GGUF takes seconds (its 49k-token vocab)
    assert gguf.config.num_hidden_layers == 6 and gguf.config.intermediate_size == 96
    weights = dict(gguf.named_parameters())
    for name, w in dense.named_parameters():
        error = (weights[name] - w).abs()
        if w.dim() == 1 or file_type == "f16":
            assert torch.equal(weights[name], w), name  # norms stay F32; float16 values are exact in F16
        else:
            amax = w.abs().reshape(-1, BLOCK).amax(1, keepdim=True)
            assert (error.reshape(-1, BLOCK) <= WEIGHT_BOUND[file_type] * amax + 1e-7).all(), name
    reference, logits = dense(heldout).logits, gguf(heldout).logits
    if file_type == "f16":
        assert torch.equal(logits, reference)
    else:
        assert 0 < (logits - reference).abs().max() <= LOGIT_BOUND[file_type] * reference.abs().max()


def test_tokenizer_and_config_come_back_from_the_file(exported: dict, pruned_dir: Path, prose: str) -> None:
    out, _ = exported["q8_0"]
    tokenizer, original = models.load_tokenizer(out), models.load_tokenizer(pruned_dir)
    text = prose[:5000] + "\ndef main():\n    print('Grüße, world!')  # 3.14"
    assert tokenizer(text).input_ids == original(text).input_ids
    assert tokenizer.chat_template == original.chat_template and tokenizer.eos_token == original.eos_token
    config = models.read_config(out)
    assert config["num_hidden_layers"] == 6 and config["intermediate_size"] == 96 and config["tie_word_embeddings"]


def test_a_gguf_checkpoint_is_parsed_once_per_process(exported: dict, gguf_parses: list, monkeypatch) -> None:
    """GGUF's reader parses the whole vocabulary (seconds): a stage that reads the config of an
    export (however often), its tokenizer and its weights parses the file once, builds gguf's tensor-name map
    once, and gets what transformers' own loading gives; gguf is left as it was."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    out, _ = exported["q8_0"]
    reader, name_map, parses = gguf.GGUFReader, gguf.get_tensor_name_map, gguf_parses
    maps = []
    monkeypatch.setattr(gguf, "get_tensor_name_map", lambda *a: maps.append(a) or name_map(*a))
    gguf_files._gguf_config.cache_clear(), gguf_files._gguf_reader.cache_clear()
    config = models.read_config(out)
    assert models.read_config(out) == config and not models.is_quantized(out)
    tokenizer, model = models.load_tokenizer(out), models.load(out)
    assert len(parses) == 1 and len(maps) == 1 and model.config.num_hidden_layers == 6
    assert models.read_config(out) == config  # what loading changed in its config was a copy
    assert gguf.GGUFReader is reader and export.describe(out / export.GGUF_NAME)["tensors"] and len(parses) == 1

    name = export.GGUF_NAME  # transformers alone: a parse each for config, tokenizer and weights, as before
    plain = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    assert len(parses) == 3 and len(maps) > 10
    expected = plain.state_dict()
    assert all(torch.equal(t, expected[k]) for k, t in model.state_dict().items())
    text = "GGUF files hold the tokenizer too."
    assert tokenizer(text).input_ids == AutoTokenizer.from_pretrained(out, gguf_file=name)(text).input_ids


def test_padding_token_comes_from_the_file_where_transformers_drops_it(exported: dict, gguf_parses: list,
                                                                       monkeypatch) -> None:
    out, _ = exported["q8_0"]
    expected = models.load_tokenizer(out).pad_token
    load = models.AutoTokenizer.from_pretrained

    def without_pad(*args, **kwargs):  # what transformers 5.17 returned for the export of a Llama-shaped model
        tokenizer = load(*args, **kwargs)
        tokenizer.pad_token = None
        return tokenizer

    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", without_pad)
    models.read_config(out)  # as the evaluate stage does first
    parsed = len(gguf_parses)
    assert expected is not None and models.load_tokenizer(out).pad_token == expected
    assert len(gguf_parses) == parsed  # tokenizer and padding token come from the file as parsed for the config


@pytest.mark.parametrize("file_type", TYPES[1:])
def test_rerun_is_byte_identical(file_type: str, exported: dict, pruned_dir: Path, tmp_path: Path) -> None:
    first, metrics = exported[file_type]
    assert export.to_gguf(pruned_dir, tmp_path / "again", file_type) == metrics
    assert filecmp.cmp(first / export.GGUF_NAME, tmp_path / "again" / export.GGUF_NAME, shallow=False)


def test_bad_type_names_the_parameter_and_the_choices(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"export\.type='q4_k_xl' is not allowed; choose one of \['f16', .*'q4_k_m'"):
        Export(enabled=True, type="q4_k_xl", imatrix=True, embedding_type="auto")
    with pytest.raises(ValueError, match=r"kquant_base\.embedding_type='q7_0' is not allowed"):
        KquantBase(enabled=True, type="q4_k_m", imatrix=True, embedding_type="q7_0")
    with pytest.raises(ValueError, match=r"export\.type='Q8_0'"):
        export.to_gguf(tiny_dir, tmp_path / "out", "Q8_0")
    assert not (tmp_path / "out").exists()
