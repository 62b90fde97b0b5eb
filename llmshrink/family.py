"""The one description of a decoder family the stages ask instead of assuming Llama: where the layers are, which
linear layers a layer has (fused ones such as Phi-3's `qkv_proj` / `gate_up_proj` and the projections they hold),
biases, q/k norms, per-layer attention types, tied and scaled embeddings and the output head's scaling.

Everything is read from the transformers model (its modules, on the meta device when only a folder is given) and
config; the rest comes from the libraries that already know it: GPTQ support from GPTQModel's model map (`quantize`),
whether a model converts from llama.cpp's converter (`export`), the GGUF read-back from transformers' GGUF loader
(`models`). The only tables here are the row layout of fused projections and two GGUF architecture names.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from llmshrink.params import MODULES

# model_type -> the causal-LM class the pipeline runs (text-only decoders)
FAMILIES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "granite": "GraniteForCausalLM",
}
# fused linear layer -> the projections its output rows hold, in order (Phi-3's, as transformers splits them)
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
ATTENTION, MLP = "self_attn", "mlp"
# model_type -> llama.cpp's architecture name where its converter writes another (Mistral as a Llama; the text-only
# Gemma 3 under its family's name); every other family keeps its model_type
GGUF_ARCH = {"mistral": "llama", "gemma3_text": "gemma3"}


class Unsupported(ValueError):
    """A family a stage cannot handle, raised before any heavy work; the message names the family and stage."""

    def __init__(self, family: str, stage: str, why: str) -> None:
        super().__init__(f"{stage}: model family {family!r} is not supported here: {why}")


def check(config: Any) -> None:
    """Refuse a model_type outside `FAMILIES` (a ValueError naming it and the supported ones)."""
    if config.model_type not in FAMILIES:
        hint = " (a Gemma 3 with vision: save its text model, model_type gemma3_text)" \
            if config.model_type == "gemma3" else ""
        raise ValueError(f"model_type {config.model_type!r} ({', '.join(config.architectures or [])}) is not "
                         f"supported{hint}; supported families: "
                         + ", ".join(f"{t} ({arch})" for t, arch in FAMILIES.items()))


@dataclass(frozen=True)
class Family:
    """A decoder family as the pipeline sees it. `linears` are the module paths inside a decoder layer
    ("self_attn.qkv_proj"); `fused` maps those of them that hold several projections to the projections."""

    model_type: str
    architecture: str
    linears: tuple[str, ...]
    fused: dict[str, tuple[str, ...]] = field(default_factory=dict)
    biased: tuple[str, ...] = ()
    qk_norm: str | None = None  # "head" (over head_dim: Qwen3, Gemma 3) or "full" (over all heads: OLMo 2)
    layer_types: tuple[str, ...] | None = None
    sliding_window: int | None = None
    tied_embeddings: bool = False
    embed_scale: float | None = None  # Gemma: sqrt(hidden_size); Granite: embedding_multiplier
    logits_scaling: float | None = None  # Granite: logits divided by it
    logit_softcap: float | None = None  # Gemma 2: cap * tanh(logits / cap)

    def module(self, projection: str) -> str:
        """The module path inside a layer holding `projection` ("q_proj" -> "self_attn.q_proj" or
        "self_attn.qkv_proj")."""
        for path in self.linears:
            if projection in self.projections(path):
                return path
        raise KeyError(f"{self.model_type} has no {projection}")

    def projections(self, path: str) -> tuple[str, ...]:
        """The projections (`MODULES` names) the linear layer `path` holds."""
        return self.fused.get(path, (path.rsplit(".", 1)[-1],))

    def resolve(self, stage: str, names: tuple[str, ...] | list[str]) -> list[str]:
        """The linear layers' own names (last part of the path) that hold the projections `names`, for matching
        modules by name; a fused layer only when all its projections are named, else `Unsupported`."""
        out = []
        for path in self.linears:
            held = self.projections(path)
            named = [p for p in held if p in names]
            if named and len(named) < len(held):
                raise Unsupported(self.model_type, stage, f"{path} fuses {', '.join(held)}: name all of them or "
                                  f"none (given {', '.join(named)})")
            if named and (last := path.rsplit(".", 1)[-1]) not in out:
                out.append(last)
        return out

    def rows(self, config: Any) -> dict[str, tuple[str, int, int]]:
        """Each projection -> (module path, first row, row count) of its output rows."""
        d = head_dim(config)
        size = {"q_proj": config.num_attention_heads * d, "k_proj": config.num_key_value_heads * d,
                "v_proj": config.num_key_value_heads * d, "o_proj": config.hidden_size,
                "gate_proj": config.intermediate_size, "up_proj": config.intermediate_size,
                "down_proj": config.hidden_size}
        out = {}
        for path in self.linears:
            start = 0
            for p in self.projections(path):
                out[p] = (path, start, size[p])
                start += size[p]
        return out

    def describe(self) -> str:
        """One line naming what sets this family's decoder apart from Llama's (for the stages' logs)."""
        fused = ", ".join(f"{path} = {'+'.join(held)}" for path, held in self.fused.items())
        parts = [f"fused {fused}" if fused else "",
                 f"biases on {', '.join(self.biased)}" if self.biased else "",
                 f"{self.qk_norm} q/k norms" if self.qk_norm else "",
                 f"layer types {'/'.join(sorted(set(self.layer_types)))}" if self.layer_types else "",
                 f"sliding window {self.sliding_window}" if self.sliding_window else "",
                 "tied embeddings" if self.tied_embeddings else "",
                 f"embeddings x{self.embed_scale:g}" if self.embed_scale else "",
                 f"logits / {self.logits_scaling:g}" if self.logits_scaling else "",
                 f"logits soft-capped at {self.logit_softcap:g}" if self.logit_softcap else ""]
        return f"{self.model_type} ({self.architecture}): " + ("; ".join(p for p in parts if p) or "Llama-like")


def gguf_arch(model_type: str) -> str:
    """The `general.architecture` llama.cpp's converter writes for a family."""
    return GGUF_ARCH.get(model_type, model_type)


def head(model: PreTrainedModel) -> torch.nn.Module | Callable[[torch.Tensor], torch.Tensor]:
    """The output head as the model's forward applies it to the last hidden states, from the config alone (so
    also for GPTQ and GGUF checkpoints): the LM head itself, or with Granite's logits scaling and Gemma 2's final
    soft-capping."""
    lm_head, config = model.get_output_embeddings(), model.config
    scaling = getattr(config, "logits_scaling", None)
    cap = getattr(config, "final_logit_softcapping", None)
    if scaling in (None, 1) and cap is None:
        return lm_head
    return functools.partial(_scaled_head, lm_head, scaling, cap)


def _scaled_head(lm_head: torch.nn.Module, scaling: float | None, cap: float | None,
                 hidden: torch.Tensor) -> torch.Tensor:
    logits = lm_head(hidden)
    if scaling is not None:
        logits = logits / scaling
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The decoder layers of a causal LM (its decoder's `layers`)."""
    return model.get_decoder().layers


def set_layers(model: PreTrainedModel, kept: list[torch.nn.Module] | torch.nn.ModuleList) -> None:
    """Replace the decoder layers of a causal LM."""
    model.get_decoder().layers = kept if isinstance(kept, torch.nn.ModuleList) else torch.nn.ModuleList(kept)


def of(model: PreTrainedModel) -> Family:
    """The family of a loaded (or meta-device) causal LM, read from its first decoder layer and config."""
    config = model.config
    check(config)
    layer = layers(model)[0]
    linears = tuple(name for name, m in layer.named_modules() if isinstance(m, torch.nn.Linear))
    unknown = [p for p in linears if not set(FUSED.get(p.rsplit(".", 1)[-1], (p.rsplit(".", 1)[-1],))) <= set(MODULES)]
    if unknown or not all(p.startswith((f"{ATTENTION}.", f"{MLP}.")) for p in linears):
        raise ValueError(f"{config.model_type}: unexpected linear layers {unknown or linears} in a decoder layer")
    attn = layer.get_submodule(ATTENTION)
    q_norm = getattr(attn, "q_norm", None)
    embed = model.get_input_embeddings()
    scale = getattr(embed, "scalar_embed_scale", None) or getattr(config, "embedding_multiplier", None)
    return Family(
        model_type=config.model_type,
        architecture=type(model).__name__,
        linears=linears,
        fused={p: FUSED[p.rsplit(".", 1)[-1]] for p in linears if p.rsplit(".", 1)[-1] in FUSED},
        biased=tuple(p for p in linears if layer.get_submodule(p).bias is not None),
        qk_norm=None if q_norm is None else "head" if q_norm.weight.numel() == head_dim(config) else "full",
        layer_types=tuple(config.layer_types) if getattr(config, "layer_types", None) else None,
        sliding_window=getattr(config, "sliding_window", None),
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        embed_scale=float(scale) if scale not in (None, 1, 1.0) else None,
        logits_scaling=getattr(config, "logits_scaling", None) if getattr(config, "logits_scaling", 1) != 1 else None,
        logit_softcap=getattr(config, "final_logit_softcapping", None),
    )


def of_path(path: str | Path) -> Family:
    """The family of a dense checkpoint folder, from its config alone (the model built on the meta device)."""
    with torch.device("meta"):
        return of(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path)))
