"""AWQ 4-bit weights (group 128, zero points, fp16 scales) run by the Marlin kernel from gptqmodel.

AutoAWQ is archived and does not run on current torch/transformers; transformers 5 routes AWQ
checkpoints through gptqmodel, whose AWQ Marlin kernel (ported from vLLM) is the maintained one.
gptqmodel builds the kernel on first use (a few minutes) and caches it. Marlin runs fp16 here.
Marlin zero-pads a weight whose shape does not fit its 64 x 128 tile (SmolLM2's K = 576 at group
size 64 becomes 640): the padded tensors are what it stores and reads, and what the floor counts.
"""

from __future__ import annotations

import torch
from qbench.backends import formats

from qbench.api import PackedFormatBackend, QuantLinear


class AwqMarlinLinear(QuantLinear):
    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        in_features: int,
        out_features: int,
        bias: torch.Tensor | None,
        group_size: int,
    ):
        from gptqmodel.nn_modules.qlinear.marlin_awq import AwqMarlinLinear as Kernel
        from gptqmodel.utils.backend import BACKEND

        super().__init__(in_features, out_features, None, group_size)
        device = tensors["qweight"].device
        # The reference keeps a copy of the checkpoint's tensors (Marlin repacks them) until the gate ends.
        self.checkpoint = {name: t.detach().clone() for name, t in tensors.items()}
        with torch.device(device):
            kernel = Kernel(
                bits=4,
                group_size=group_size,
                desc_act=False,
                sym=False,
                in_features=in_features,
                out_features=out_features,
                bias=bias is not None,
                register_buffers=True,
                dtype=torch.float16,
                backend=BACKEND.AWQ_MARLIN,
            )
        kernel.qweight.data = tensors["qweight"].to(device)
        kernel.qzeros.data = tensors["qzeros"].to(device)
        kernel.scales.data = tensors["scales"].to(device, torch.float16)
        if bias is not None:
            kernel.bias.data = bias.detach().to(device, torch.float16)
            self.checkpoint["bias"] = bias.detach().clone()
        kernel.post_init()
        self.kernel = kernel

    def stored_tensors(self) -> list[torch.Tensor]:
        return [self.kernel.qweight, self.kernel.qzeros, self.kernel.scales]

    def bias_tensor(self) -> torch.Tensor | None:
        return getattr(self.kernel, "bias", None)

    def dequantize(self) -> torch.Tensor:
        device = self.kernel.qweight.device
        tensors = {k: v.to(device) for k, v in self.checkpoint.items() if k != "bias"}
        return formats.awq_dequantize(tensors, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reference:
            bias = self.checkpoint.get("bias")
            bias = None if bias is None else bias.to(x.device, x.dtype)
            return torch.nn.functional.linear(x, self.dequantize().to(x.dtype), bias)
        return self.kernel(x)


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

    def linear_bytes(self, in_features: int, out_features: int, group_size: int) -> int:
        return formats.awq_marlin_bytes(in_features, out_features, group_size)

    def prepare(self, device: str) -> None:
        from gptqmodel.utils.marlin import prewarm_marlin_extension

        if not prewarm_marlin_extension(torch.float16):
            from gptqmodel.utils.marlin import marlin_runtime_error

            raise RuntimeError(f"gptqmodel Marlin kernel did not build: {marlin_runtime_error(torch.float16)}")

    def quantize_tensors(self, weight: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
        return formats.awq_quantize(weight, group_size)

    def make_linear(self, tensors, in_features, out_features, bias, group_size) -> AwqMarlinLinear:
        return AwqMarlinLinear(tensors, in_features, out_features, bias, group_size)
