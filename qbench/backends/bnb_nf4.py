"""bitsandbytes NF4: 4-bit NormalFloat, blocksize 64, double-quantised absmax, bf16 compute.

At batch 1 bitsandbytes' `matmul_4bit` dispatches to its fused 4-bit GEMV (`gemv_4bit`); larger
inputs dequantise and call cuBLAS. bitsandbytes quantises at load time, as deployments do.
"""

from __future__ import annotations

import torch

from qbench import formats
from qbench.api import Backend, QuantLinear


class Nf4Linear(QuantLinear):
    def __init__(self, packed, quant_state, in_features, out_features, bias):
        super().__init__(in_features, out_features, bias, formats.NF4_BLOCKSIZE)
        self.register_buffer("packed", packed)
        self.quant_state = quant_state

    @classmethod
    def quantize(cls, linear: torch.nn.Linear) -> Nf4Linear:
        import bitsandbytes.functional as bnbf

        weight = linear.weight.detach().to(torch.bfloat16).contiguous()
        packed, state = bnbf.quantize_4bit(
            weight, blocksize=formats.NF4_BLOCKSIZE, compress_statistics=True, quant_type="nf4"
        )
        return cls(packed, state, linear.in_features, linear.out_features, linear.bias)

    def stored_tensors(self) -> list[torch.Tensor]:
        state = self.quant_state
        nested = state.state2
        return [self.packed, state.absmax, state.code, nested.absmax, nested.code, state.offset.reshape(1)]

    def dequantize(self) -> torch.Tensor:
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(self.packed, self.quant_state).float()

    def kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        import bitsandbytes as bnb

        return bnb.matmul_4bit(x, self.packed.t(), bias=self.bias, quant_state=self.quant_state)


class BnbNf4Backend(Backend):
    name = "bnb-nf4"
    description = "bitsandbytes NF4 (blocksize 64, double quant), bf16 compute"
    kernel = "bitsandbytes gemv_4bit at batch 1 (CUDA); on CPU, bitsandbytes' own CPU 4-bit path"
    kernel_pattern = "gemv_4bit|gemm_4bit"
    compute_dtype = "bfloat16"
    bits = 4
    packages = {"bitsandbytes": "bitsandbytes"}
    extra = "bnb"
    imports_compiler = True  # bitsandbytes.backends.default.ops imports torch._dynamo and inductor
    # lean compiles its step around this kernel: tried on the H100 with QBENCH_LEAN_COMPILE=all, the
    # gate passed and the step got faster (results/h100/lean-gemv)
    lean_compile = True

    def label(self, group_size: int) -> str:
        return f"{self.name} (g{formats.NF4_BLOCKSIZE})"  # one convention: gN = N weights share a scale

    def linear_bytes(self, in_features: int, out_features: int, group_size: int) -> int:
        return formats.nf4_bytes(in_features, out_features)

    def quantize_linear(self, linear: torch.nn.Linear, group_size: int) -> Nf4Linear:
        return Nf4Linear.quantize(linear)

    def cache_tensors(self, module: Nf4Linear) -> dict[str, torch.Tensor]:
        """The packed weight and bitsandbytes' own serialisation of its quantisation state."""
        state = {f"state.{k}": v for k, v in module.quant_state.as_dict(packed=True).items()}
        tensors = {"packed": module.packed, **state}
        return tensors if module.bias is None else {**tensors, "bias": module.bias}

    def from_checkpoint_tensors(self, tensors, linear, group_size) -> Nf4Linear:
        from bitsandbytes.functional import QuantState

        packed = tensors["packed"]
        state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
        quant_state = QuantState.from_dict(state, device=packed.device)
        return Nf4Linear(packed, quant_state, linear.in_features, linear.out_features, tensors.get("bias"))
