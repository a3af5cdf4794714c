"""The common shape of a quantised linear layer: a kernel path and a dequantised reference path.

`forward` runs the backend's kernel. With `reference = True` it instead multiplies by the
dequantised weight in the compute dtype: the same numbers, the plain path. The correctness gate
runs both and compares.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class QuantLinear(torch.nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None, group_size: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach(), requires_grad=False)
        self.reference = False
        self.checkpoint: dict[str, torch.Tensor] | None = None  # what dequantize() reads; freed after the gate

    def release_reference(self) -> None:
        """Drop the copy kept for the reference path, so timing sees only the kernel's tensors."""
        self.checkpoint = None

    def bias_tensor(self) -> torch.Tensor | None:
        """The bias the kernel adds (a step reads it), wherever the module keeps it."""
        return self.bias

    def dequantize(self) -> torch.Tensor:
        """The weight [out, in] that the kernel multiplies by, in float32."""
        raise NotImplementedError

    def kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def stored_tensors(self) -> list[torch.Tensor]:
        """Every tensor the kernel reads for this weight (biases excluded)."""
        raise NotImplementedError

    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.stored_tensors())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reference:
            return F.linear(x, self.dequantize().to(x.dtype), self.bias)
        return self.kernel_forward(x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"
