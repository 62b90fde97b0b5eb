"""4-bit GPTQ matrices on PyTorch's built-in int4 kernel: tinygemm (`aten._weight_int4pack_mm`), the batch-1
decode kernel of gpt-fast and torchao's int4 weight-only layout. It ships compiled inside torch, so it works
offline, and it traces into `torch.compile` graphs and CUDA graphs like any aten op.

GPTQ stores w = s (q - z) per group; tinygemm computes w = scale (q - 8) + zero, so scale = s and
zero = s (8 - z): the same grid, exactly, up to rounding `zero` to bfloat16. The EoRA adapter, where there is
one, is added as (x A) B in the same module, so it compiles into the same graph. Inputs of many rows
(evaluation, prefill) use the dequantized matrix and a dense matmul, which is faster there than tinygemm.

At batch 1 a small model's step is bound by kernel count more than by bytes, so `fuse` concatenates the
projections that read one input (q/k/v, gate/up) into one matrix: one kernel call where there were three or two.
"""
from __future__ import annotations

import torch
from torch import nn

BITS = 4
GROUP_SIZES = (32, 64, 128, 256)  # what the kernel accepts
DENSE_ROWS = 64  # inputs with more rows than this go through the dequantized matrix


def codes(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4-bit codes of a GPTQModel quantized linear layer: weights [out, in] and zero points [groups, out]
    (uint8), unpacked from its int32 `qweight` [in / 8, out] and `qzeros` [groups, out / 8]."""
    shifts = torch.arange(0, 32, BITS, dtype=torch.int32, device=module.qweight.device)
    weight = (module.qweight.unsqueeze(1) >> shifts.view(1, -1, 1)) & 15
    zeros = (module.qzeros.unsqueeze(2) >> shifts.view(1, 1, -1)) & 15
    return (weight.reshape(-1, weight.shape[-1]).t().to(torch.uint8).contiguous(),
            zeros.reshape(zeros.shape[0], -1)[:, :module.scales.shape[1]].to(torch.uint8))


def is_gptq_layer(module: nn.Module) -> bool:
    """Whether `module` is a GPTQModel quantized linear layer (packed `qweight` instead of a `weight`)."""
    return hasattr(module, "qweight") and hasattr(module, "in_features")


def why_not(module: nn.Module) -> str | None:
    """Why the kernel cannot run `module` (a GPTQModel quantized linear layer), or None when it can."""
    k, n, group = module.in_features, module.out_features, module.group_size
    if module.bits != BITS:
        return f"{module.bits} bits (the kernel is 4-bit)"
    if group not in GROUP_SIZES or k % group:
        return f"group size {group} with {k} inputs (needs one of {GROUP_SIZES} dividing the inputs)"
    if k % 32 or n % 8:
        return f"shape {n} x {k} (needs inputs divisible by 32 and outputs by 8)"
    if not torch.equal(module.g_idx.cpu(), torch.arange(k) // group):
        return "act-order groups (desc_act): the kernel needs contiguous groups"
    return None


class Int4Linear(nn.Module):
    """A 4-bit linear layer on tinygemm, in bfloat16: codes [out, in] and zero points [groups, out] (uint8, 0..15),
    scales [groups, out], an optional bias and an optional low-rank adapter (lora_A [in, r], lora_B [r, out])."""

    def __init__(self, weight: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None = None, lora: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.group_size = group_size
        self.register_buffer("scales_and_zeros", scales_and_zeros.to(torch.bfloat16).contiguous())  # [G, out, 2]
        self.register_buffer("nibbles", (weight[:, ::2] << 4 | weight[:, 1::2]).contiguous())  # [out, in / 2]
        if weight.is_cuda:
            tiles = 8 if self.in_features % 128 == 0 else (4 if self.in_features % 64 == 0 else 2)
            packed = torch.ops.aten._convert_weight_to_int4pack(self.nibbles, tiles)
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(weight.int(), 1)
        self.register_buffer("packed", packed)
        self.register_buffer("bias", None if bias is None else bias.to(torch.bfloat16))
        self.register_buffer("lora_A", None if lora is None else lora[0].to(torch.bfloat16))
        self.register_buffer("lora_B", None if lora is None else lora[1].to(torch.bfloat16))

    @classmethod
    def from_codes(cls, weight: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, group_size: int,
                   bias: torch.Tensor | None = None, lora: tuple[torch.Tensor, torch.Tensor] | None = None) -> Int4Linear:
        """From codes [out, in] and zero points [groups, out] (uint8, 0..15) and scales [groups, out]."""
        scales = scales.to(torch.bfloat16)
        offsets = (8 - zeros.to(torch.bfloat16)) * scales
        return cls(weight, torch.stack([scales, offsets], dim=2), group_size, bias, lora)

    @classmethod
    def concat(cls, layers: list[Int4Linear]) -> Int4Linear:
        """One layer computing the outputs of `layers` (same inputs and group size) side by side; their adapters,
        where any has one, as one adapter of the summed rank (A side by side, B block-diagonal)."""
        if not concatenable(layers):
            raise ValueError("only layers of the same input width and group size concatenate")
        biases = [m.bias if m.bias is not None else m.scales_and_zeros.new_zeros(m.out_features) for m in layers]
        bias = torch.cat(biases) if any(m.bias is not None for m in layers) else None
        lora = None
        if any(m.lora_A is not None for m in layers):
            empty = [(m.nibbles.new_zeros(m.in_features, 0, dtype=torch.bfloat16),
                      m.nibbles.new_zeros(0, m.out_features, dtype=torch.bfloat16)) for m in layers]
            pairs = [(m.lora_A, m.lora_B) if m.lora_A is not None else e for m, e in zip(layers, empty)]
            lora = torch.cat([a for a, _ in pairs], dim=1), torch.block_diag(*(b for _, b in pairs))
        return cls(torch.cat([m.codes() for m in layers]), torch.cat([m.scales_and_zeros for m in layers], dim=1),
                   layers[0].group_size, bias, lora)

    @classmethod
    def from_gptq(cls, module: nn.Module) -> Int4Linear:
        """The GPTQModel quantized linear layer `module`, with its EoRA adapter where it has one."""
        if reason := why_not(module):
            raise ValueError(f"tinygemm cannot run this layer: {reason}")
        adapter = getattr(module, "adapter", None)
        lora = (adapter.lora_A, adapter.lora_B) if getattr(adapter, "lora_A", None) is not None else None
        return cls.from_codes(*codes(module), module.scales, module.group_size, getattr(module, "bias", None), lora)

    @classmethod
    def round_to_nearest(cls, linear: nn.Linear, group_size: int) -> Int4Linear:
        """`linear` rounded to the nearest point of an asymmetric 4-bit grid per group (for benchmarks)."""
        w = linear.weight.detach().float().view(linear.out_features, -1, group_size)
        low, high = w.amin(-1, keepdim=True).clamp(max=0), w.amax(-1, keepdim=True).clamp(min=0)
        scales = ((high - low) / 15).clamp(min=1e-8)
        zeros = (-low / scales).round().clamp(0, 15)
        weight = (w / scales + zeros).round().clamp(0, 15).to(torch.uint8).reshape(linear.out_features, -1)
        return cls.from_codes(weight, zeros.squeeze(-1).t().to(torch.uint8), scales.squeeze(-1).t(), group_size,
                              linear.bias)

    def codes(self) -> torch.Tensor:
        """The 4-bit codes [out, in] (uint8, 0..15)."""
        return torch.stack([self.nibbles >> 4, self.nibbles & 15], dim=2).reshape(self.out_features, self.in_features)

    def dequantize_weight(self) -> torch.Tensor:
        """The matrix [in, out] in bfloat16 as the kernel computes with it (GPTQModel's layers' name and layout)."""
        q = (self.codes().to(torch.bfloat16) - 8).view(self.out_features, -1, self.group_size)
        scale, zero = (self.scales_and_zeros[..., i].t().unsqueeze(-1) for i in (0, 1))
        return (q * scale + zero).reshape(self.out_features, self.in_features).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if rows.shape[0] > DENSE_ROWS:
            out = rows @ self.dequantize_weight()
        elif rows.is_cuda:
            out = torch.ops.aten._weight_int4pack_mm(rows, self.packed, self.group_size, self.scales_and_zeros)
        else:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.packed, self.group_size, self.scales_and_zeros)
        if self.bias is not None:
            out = out + self.bias
        if self.lora_A is not None:
            out = out + (rows @ self.lora_A) @ self.lora_B
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def convert(model: nn.Module) -> int:
    """Replace every GPTQ linear layer of `model` by an `Int4Linear` (in place); returns how many. Refused,
    changing nothing, when any layer cannot run on the kernel (the reason names the layer)."""
    found = [(name, m) for name, m in model.named_modules() if is_gptq_layer(m)]
    for name, module in found:
        if reason := why_not(module):
            raise ValueError(f"tinygemm cannot run {name}: {reason}")
    for name, module in found:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, Int4Linear.from_gptq(module))
    return len(found)


def concatenable(layers: list[nn.Module]) -> bool:
    """Whether `layers` are `Int4Linear`s of one input width and group size (`Int4Linear.concat` takes them)."""
    return all(isinstance(m, Int4Linear) for m in layers) and len({(m.in_features, m.group_size) for m in layers}) == 1


FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # projections of one input, in calling order


class Fused(nn.Module):
    """Projections that read the same input, computed by one `Int4Linear` over their concatenated outputs. Each
    projection becomes a `Part`: the first one called computes every part's output, the others take their slice
    of it when they are given the same input tensor (else they compute it again: correct in any order). The
    shared output is dropped once every part has taken its slice, so nothing outlives one forward pass."""

    def __init__(self, layers: list[Int4Linear]) -> None:
        super().__init__()
        self.linear = Int4Linear.concat(layers)
        self.bounds = [sum(m.out_features for m in layers[:i]) for i in range(len(layers) + 1)]
        self._input: torch.Tensor | None = None
        self._output: torch.Tensor | None = None
        self._left = 0

    def part(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if self._input is not x:
            self._input, self._output, self._left = x, self.linear(x), len(self.bounds) - 1
        out = self._output[..., self.bounds[index]:self.bounds[index + 1]]
        self._left -= 1
        if self._left == 0:
            self._input = self._output = None
        return out


class Part(nn.Module):
    """One projection of a `Fused` group, in the place of the `Int4Linear` it replaces."""

    def __init__(self, fused: Fused, index: int) -> None:
        super().__init__()
        self.index, self.in_features = index, fused.linear.in_features
        self.out_features = fused.bounds[index + 1] - fused.bounds[index]
        self.__dict__["fused"] = fused  # not a submodule: the group is registered once, on the parent

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.part(self.index, x)


def fuse(model: nn.Module) -> int:
    """In every module whose projections of `FUSED` are all `Int4Linear`s of one input width and group size,
    replace them by `Part`s of one `Fused` group (registered on that module as `fused_<first name>`); returns
    how many groups. The model computes the same outputs; at batch 1 it launches fewer kernels."""
    groups = 0
    for module in list(model.modules()):
        for names in FUSED:
            layers = [getattr(module, n, None) for n in names]
            if not concatenable(layers):
                continue
            fused = Fused(layers)
            module.add_module(f"fused_{names[0]}", fused)
            for index, n in enumerate(names):
                setattr(module, n, Part(fused, index))
            groups += 1
    return groups
