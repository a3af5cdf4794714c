"""PyTorch's built-in int4 weight-only kernel (tinygemm): `aten._weight_int4pack_mm`, no extra package.

Asymmetric 4-bit, group size 128 by default, bf16 scales and zeros, bf16 activations. On CPU the
same format runs through `aten._weight_int4pack_mm_for_cpu`.
"""

from __future__ import annotations

import torch

from qbench import formats
from qbench.api import Backend, QuantLinear

INNER_K_TILES = 8  # tinygemm tiles K by 16*inner_k_tiles; 8 is the fastest and needs K % 128 == 0


def _inner_k_tiles(in_features: int) -> int:
    for tiles in (8, 4, 2):
        if in_features % (tiles * 16) == 0:
            return tiles
    raise ValueError(f"in_features {in_features} is not a multiple of 32, as tinygemm needs")


def _unpack(nibbles: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] -> 4-bit values [N, K], high nibble first."""
    return torch.stack([nibbles >> 4, nibbles & 0xF], dim=-1).reshape(nibbles.shape[0], -1)


class TinygemmLinear(QuantLinear):
    """Built from the format's plain tensors: `nibbles` uint8 [N, K/2] (two 4-bit values a byte, high
    first) and `scales_and_zeros` bf16 [K/g, N, 2]; packed for the kernel on construction."""

    def __init__(self, nibbles, scales_and_zeros, in_features, out_features, bias, group_size):
        super().__init__(in_features, out_features, bias, group_size)
        self.on_cuda = nibbles.is_cuda
        tiles = _inner_k_tiles(self.in_features)
        if self.on_cuda:
            packed = torch.ops.aten._convert_weight_to_int4pack(nibbles.contiguous(), tiles)
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(_unpack(nibbles).to(torch.int32), tiles)
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        # The reference keeps the plain 4-bit values, two to a byte, until the gate ends.
        self.checkpoint = {"nibbles": nibbles}

    @classmethod
    def quantize(cls, linear: torch.nn.Linear, group_size: int) -> TinygemmLinear:
        q, scales_and_zeros = formats.tinygemm_quantize(linear.weight.detach(), group_size)
        nibbles = (q[:, ::2] << 4 | q[:, 1::2]).contiguous()
        return cls(nibbles, scales_and_zeros, linear.in_features, linear.out_features, linear.bias, group_size)

    def stored_tensors(self) -> list[torch.Tensor]:
        return [self.packed, self.scales_and_zeros]

    def dequantize(self) -> torch.Tensor:
        return formats.tinygemm_dequantize(_unpack(self.checkpoint["nibbles"]), self.scales_and_zeros, self.group_size)

    def kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.on_cuda:
            out = torch.ops.aten._weight_int4pack_mm(flat, self.packed, self.group_size, self.scales_and_zeros)
        else:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group_size, self.scales_and_zeros)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


class TorchInt4Backend(Backend):
    name = "torch-int4"
    description = "PyTorch built-in int4 weight-only (tinygemm), bf16 activations"
    kernel = "aten._weight_int4pack_mm (tinygemm); CPU: aten._weight_int4pack_mm_for_cpu"
    kernel_pattern = "tinygemm"
    compute_dtype = "bfloat16"
    bits = 4
    lean_compile = True  # plain aten ops: torch.compile traces them

    def linear_bytes(self, in_features: int, out_features: int, group_size: int) -> int:
        return formats.tinygemm_bytes(in_features, out_features, group_size)

    def quantize_linear(self, linear: torch.nn.Linear, group_size: int) -> TinygemmLinear:
        return TinygemmLinear.quantize(linear, group_size)

    def cache_tensors(self, module: TinygemmLinear) -> dict[str, torch.Tensor]:
        tensors = {"nibbles": module.checkpoint["nibbles"], "scales_and_zeros": module.scales_and_zeros}
        return tensors if module.bias is None else {**tensors, "bias": module.bias}

    def from_checkpoint_tensors(self, tensors, linear, group_size) -> TinygemmLinear:
        return TinygemmLinear(
            tensors["nibbles"],
            tensors["scales_and_zeros"],
            linear.in_features,
            linear.out_features,
            tensors.get("bias"),
            group_size,
        )
