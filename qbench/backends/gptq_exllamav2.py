"""GPTQ 4-bit weights (v1 zero points, group 128, sym, no act-order) run by ExLlamaV2's kernel.

qbench builds exllamav2's own CUDA extension from the sources in the `exllamav2` package (the
kernel the research measured; gptqmodel carries a copy of the same code) without importing the
rest of exllamav2, and caches it. Batch 1 runs its fused 4-bit GEMV; fp16 activations.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

import torch

from qbench import formats
from qbench.api import PackedFormatBackend, QuantLinear

_NONE = torch.empty((1, 1), device="meta")  # exllamav2's stand-in for "no tensor"
_scratch: dict[torch.device, torch.Tensor] = {}


@functools.cache
def exllamav2_ext():
    from qbench.kernels import build_extension

    package = Path(importlib.util.find_spec("exllamav2").submodule_search_locations[0])
    source_dir = package / "exllamav2_ext"
    listed = re.findall(r'"([\w/]+\.(?:cpp|cu))"', (package / "ext.py").read_text())
    sources = [source_dir / name for name in listed]
    return build_extension("exllamav2_ext", sources, [source_dir], ["-O3"], ["-lineinfo", "-O3"])


def _scratch_for(device: torch.device, elements: int) -> torch.Tensor:
    """One fp16 dequantisation buffer shared by all layers (only used for inputs of many rows)."""
    buffer = _scratch.get(device)
    if buffer is None or buffer.numel() < elements:
        buffer = torch.empty(elements, dtype=torch.float16, device=device)
        _scratch[device] = buffer
    return buffer


class ExllamaV2Linear(QuantLinear):
    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        in_features: int,
        out_features: int,
        bias: torch.Tensor | None,
        group_size: int,
    ):
        super().__init__(in_features, out_features, bias, group_size)
        if self.bias is not None:
            self.bias.data = self.bias.data.to(torch.float16)
        # make_q_matrix shuffles qweight in place: the reference keeps a copy until the gate ends.
        self.checkpoint = {name: t.detach().clone() for name, t in tensors.items()}
        device = tensors["qweight"].device
        self.register_buffer("qweight", tensors["qweight"].contiguous())
        self.register_buffer("qzeros", tensors["qzeros"].contiguous())
        self.register_buffer("scales", tensors["scales"].to(torch.float16).contiguous())
        temp_dq = _scratch_for(device, in_features * out_features + 128)
        self.q_handle = exllamav2_ext().make_q_matrix(
            self.qweight,
            _NONE,
            _NONE,
            _NONE,
            _NONE,
            _NONE,
            _NONE,
            self.qzeros,
            self.scales,
            _NONE,
            _NONE,
            temp_dq,
            0,
        )

    def stored_tensors(self) -> list[torch.Tensor]:
        return [self.qweight, self.qzeros, self.scales]

    def dequantize(self) -> torch.Tensor:
        tensors = {k: v.to(self.qweight.device) for k, v in self.checkpoint.items()}
        return formats.gptq_dequantize(tensors, self.group_size)

    def kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.float16)
        out = torch.empty(flat.shape[0], self.out_features, dtype=torch.float16, device=x.device)
        exllamav2_ext().gemm_half_q_half(flat, self.q_handle, out, False)
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


class GptqExllamaV2Backend(PackedFormatBackend):
    name = "gptq-exllamav2"
    description = "GPTQ 4-bit (v1 zeros, group 128, sym), ExLlamaV2 kernel, fp16"
    kernel = "exllamav2_ext gemm_half_q_half (GPTQ path)"
    kernel_pattern = "gemm_half_q_half"
    compute_dtype = "float16"
    bits = 4
    requires_cuda = True
    min_capability = (7, 0)
    packages = {"exllamav2": "exllamav2"}
    extra = "gptq"
    builds_kernel = True
    # lean compiles its step around this kernel: tried on the H100 with QBENCH_LEAN_COMPILE=all, the
    # gate passed and the step got faster (results/h100/lean-gemv)
    lean_compile = True

    def linear_bytes(self, in_features: int, out_features: int, group_size: int) -> int:
        return formats.gptq_bytes(in_features, out_features, group_size)

    def prepare(self, device: str) -> None:
        exllamav2_ext()

    def quantize_tensors(self, weight: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
        tensors = formats.gptq_quantize(weight, group_size)
        tensors.pop("g_idx")  # no act-order: the kernel does not read it
        return tensors

    def make_linear(self, tensors, in_features, out_features, bias, group_size) -> ExllamaV2Linear:
        return ExllamaV2Linear(tensors, in_features, out_features, bias, group_size)

    def from_checkpoint_tensors(self, tensors, linear, group_size):
        g_idx = tensors.pop("g_idx", None)
        if g_idx is not None and not torch.equal(
            g_idx.long(), torch.arange(linear.in_features, device=g_idx.device) // group_size
        ):
            raise ValueError("act-order (desc_act) GPTQ checkpoints are not supported by this backend yet")
        return super().from_checkpoint_tensors(tensors, linear, group_size)
