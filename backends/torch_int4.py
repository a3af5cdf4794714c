"""PyTorch's built-in int4 weight-only kernel (tinygemm): `aten._weight_int4pack_mm`, no extra package.

Asymmetric 4-bit, group size 128 by default, bf16 scales and zeros, bf16 activations. On CPU the
same format runs through `aten._weight_int4pack_mm_for_cpu`.
"""

from __future__ import annotations

import torch
from qbench.backends import formats

from qbench.backend import Backend
from qbench.quantlinear import QuantLinear

INNER_K_TILES = 8  # tinygemm tiles K by 16*inner_k_tiles; 8 is the fastest and needs K % 128 == 0


def _inner_k_tiles(in_features: int) -> int:
    for tiles in (8, 4, 2):
        if in_features % (tiles * 16) == 0:
            return tiles
    raise ValueError(f"in_features {in_features} is not a multiple of 32, as tinygemm needs")


class TinygemmLinear(QuantLinear):
    def __init__(self, linear: torch.nn.Linear, group_size: int):
        super().__init__(linear.in_features, linear.out_features, linear.bias, group_size)
        q, scales_and_zeros = formats.tinygemm_quantize(linear.weight.detach(), group_size)
        self.on_cuda = linear.weight.is_cuda
        tiles = _inner_k_tiles(self.in_features)
        if self.on_cuda:
            nibbles = (q[:, ::2] << 4 | q[:, 1::2]).contiguous()
            packed = torch.ops.aten._convert_weight_to_int4pack(nibbles, tiles)
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), tiles)
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        # The reference keeps the plain 4-bit values, two to a byte, until the gate ends.
        self.checkpoint = {"nibbles": (q[:, ::2] << 4 | q[:, 1::2])}

    def stored_tensors(self) -> list[torch.Tensor]:
        return [self.packed, self.scales_and_zeros]

    def dequantize(self) -> torch.Tensor:
        nibbles = self.checkpoint["nibbles"]
        q = torch.stack([nibbles >> 4, nibbles & 0xF], dim=-1).reshape(self.out_features, self.in_features)
        return formats.tinygemm_dequantize(q, self.scales_and_zeros, self.group_size)

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

    def linear_bytes(self, in_features: int, out_features: int, group_size: int) -> int:
        return formats.tinygemm_bytes(in_features, out_features, group_size)

    def quantize_linear(self, linear: torch.nn.Linear, group_size: int) -> TinygemmLinear:
        return TinygemmLinear(linear, group_size)
