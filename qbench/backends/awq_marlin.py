"""AWQ 4-bit weights (group 128, zero points, fp16 scales) run by the Marlin kernel from gptqmodel.

AutoAWQ is archived and does not run on current torch/transformers; transformers 5 routes AWQ
checkpoints through gptqmodel, whose AWQ Marlin kernel (ported from vLLM) is the maintained one.
gptqmodel builds the kernel on first use (a few minutes); qbench keeps a copy of the built library
and calls its ops with gptqmodel's own repacking, without importing gptqmodel again
(`marlin_direct.py` says how and why). Marlin runs fp16 here.
Marlin zero-pads a weight whose shape does not fit its 64 x 128 tile (SmolLM2's K = 576 at group
size 64 becomes 640): the padded tensors are what it stores and reads, and what the floor counts.
"""

from __future__ import annotations

import torch

from qbench import formats
from qbench.api import PackedFormatBackend, QuantLinear
from qbench.formats import marlin_direct


class AwqMarlinLinear(QuantLinear):
    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        in_features: int,
        out_features: int,
        bias: torch.Tensor | None,
        group_size: int,
    ):
        super().__init__(in_features, out_features, None, group_size)
        # The reference keeps a copy of the checkpoint's tensors (Marlin repacks them) until the gate ends.
        self.checkpoint = {name: t.detach().clone() for name, t in tensors.items()}
        if bias is not None:
            self.checkpoint["bias"] = bias.detach().clone()
        self.marlin = marlin_direct.MarlinAwqWeights(tensors, in_features, out_features, bias, group_size)

    def stored_tensors(self) -> list[torch.Tensor]:
        return self.marlin.tensors()

    def bias_tensor(self) -> torch.Tensor | None:
        return self.marlin.bias

    def dequantize(self) -> torch.Tensor:
        device = self.marlin.qweight.device
        tensors = {k: v.to(device) for k, v in self.checkpoint.items() if k != "bias"}
        return formats.awq_dequantize(tensors, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reference:
            bias = self.checkpoint.get("bias")
            bias = None if bias is None else bias.to(x.device, x.dtype)
            return torch.nn.functional.linear(x, self.dequantize().to(x.dtype), bias)
        return self.marlin.matmul(x)


class AwqMarlinBackend(PackedFormatBackend):
    name = "awq-marlin"
    description = "AWQ 4-bit (group 128, zero points), Marlin kernel via gptqmodel, fp16"
    kernel = "gptqmodel AWQ Marlin (gptqmodel_marlin_fp16 ops)"
    kernel_pattern = "[Mm]arlin"
    compute_dtype = "float16"
    bits = 4
    requires_cuda = True
    min_capability = (8, 0)
    packages = {"gptqmodel": "gptqmodel"}
    extra = "awq"
    builds_kernel = True
    # lean compiles its step around this kernel: tried on the H100 with QBENCH_LEAN_COMPILE=all, the
    # gate passed and the step got faster (results/h100/lean-gemv)
    lean_compile = True

    def linear_bytes(self, in_features: int, out_features: int, group_size: int) -> int:
        return formats.awq_marlin_bytes(in_features, out_features, group_size)

    def prepare(self, device: str) -> None:
        marlin_direct.ensure_library()

    def load_notes(self) -> list[str]:
        return [marlin_direct.ensure_library()]  # once per process: the line prepare() left

    def quantize_tensors(self, weight: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
        return formats.awq_quantize(weight, group_size)

    def make_linear(self, tensors, in_features, out_features, bias, group_size) -> AwqMarlinLinear:
        return AwqMarlinLinear(tensors, in_features, out_features, bias, group_size)
