"""`qbench-int4`: qbench's own 4-bit weight GEMV (qbench/runtimes/kernels/gemv_int4.py), not a library's kernel.

Asymmetric 4-bit, group size 128 (or 64), fp16 scales and integer zero points, bf16 activations. The
weights arrive as a published checkpoint stores them, AWQ (qweight [K, N/8], qzeros, scales: what
qbench's round-to-nearest quantiser produces, `formats.awq_quantize`) or GPTQ v1 without act-order
(qweight [K/8, N], qzeros holding zero - 1, scales, g_idx), and are repacked once, at load, into the
kernel's layout (int32 [N, K/8] with K contiguous, fp16 scales and uint8 zeros [N, K/g] stored
group-major, as the checkpoints store them). The gate's
reference dequantises the checkpoint's own tensors, so it checks the repacking as well as the kernel.

One activation row (a decode step) runs the Triton kernel, the custom op `qbench::gemv_int4`; under
`lean` q, k, v of a layer are one launch and gate, up another (their packed weights concatenated at
load). More rows (a prefill, perplexity) dequantise the packed weight to the activations' dtype (on
CUDA one Triton launch, `dequantize_triton`; the torch path the tests compare it with goes a slice of
rows at a time, so no float32 copy of a whole weight is ever held) and call F.linear: correct, not
what a decode step times. CUDA only: qbench never runs it
emulated (its tests call the kernel under Triton's interpreter on the CPU).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from qbench import formats
from qbench.api import PackedFormatBackend, QuantLinear
from qbench.runtimes.joined import join_rows
from qbench.runtimes.kernels import gemv_int4


class Int4Gemv:
    """lean's one launch of qbench's 4-bit GEMV (`gemv_int4.py`) over the concatenated packed weights
    of `modules` (this backend's layers sharing their input: q, k, v; gate, up); each module's
    qweight, scales, zeros and bias become views into the concatenation. QbenchInt4Linear's
    `lean_fuser`, as gemlite's 8-bit layers name theirs."""

    what = "4-bit linear layers: qbench's int4 GEMV"  # lean's note
    # its launches take `pdl` (a programmatic dependent launch: qbench/runtimes/kernels/overlap.py); lean
    # refuses them under QBENCH_LEAN_PDL=on until the hang on the H100 is understood
    overlaps = True

    def __init__(self, qweight, scales, zeros, bias, group_size: int, sizes: list[int], sms: int, pdl: bool = False):
        self.qweight, self.scales, self.zeros, self.bias = qweight, scales, zeros, bias
        self.group_size, self.sizes, self.pdl = group_size, sizes, pdl
        hopper = gemv_int4.hopper(qweight.device)  # qbench-int4's activations are bf16
        self.blocks = gemv_int4.choose_blocks(qweight.shape[0], qweight.shape[1] * 8, sms, group_size, hopper)

    @staticmethod
    def fusable(modules: list) -> bool:
        if not modules or any(not isinstance(m, QbenchInt4Linear) for m in modules):
            return False
        first = modules[0]
        return all(
            m.in_features == first.in_features and m.group_size == first.group_size for m in modules
        ) and len({m.bias is None for m in modules}) == 1

    folds = True  # takes lean's QBENCH_LEAN_FOLD arguments (gemv_int4.gemv_int4: those of gemv.gemv)
    squares = True  # and its own two: `squares` (h's sums of squares after y) and `rms_parts` (them as rms)

    @classmethod
    def fuse(cls, modules: list, sms: int, pdl: bool = False, interleave: bool = False) -> Int4Gemv:
        """`interleave` (lean's fold of gate and up): the two modules' rows alternate, so each program
        holds whole (gate, up) pairs and the GEMV returns their SiLU product; the modules' own tensors
        become strided views (their prefill copies them: `QbenchInt4Linear.kernel_tensors`)."""
        with torch.no_grad():
            fused, views = {}, {}
            for name in ("qweight", "scales", "zeros", "bias"):
                parts = [getattr(m, name) for m in modules]
                if parts[0] is None:
                    fused[name] = None
                    continue
                # scales and zeros group-major, as each layer's (gemv_int4.py's layout)
                fused[name], views[name] = join_rows([p.detach() for p in parts], interleave,
                                                     group_major=name in ("scales", "zeros"))
            for i, module in enumerate(modules):
                for name in ("qweight", "scales", "zeros"):
                    setattr(module, name, views[name][i])
                if fused["bias"] is not None:
                    module.bias = torch.nn.Parameter(views["bias"][i], requires_grad=False)
        sizes = [m.out_features for m in modules]
        return cls(
            fused["qweight"], fused["scales"], fused["zeros"], fused["bias"], modules[0].group_size, sizes, sms, pdl
        )

    def __call__(
        self, x: torch.Tensor, rms: torch.Tensor | None = None, eps: float = 0.0,
        residual: torch.Tensor | None = None, scale_out: torch.Tensor | None = None, silu: bool = False,
        squares: bool = False, rms_parts: bool = False,
    ) -> torch.Tensor:
        """W x (+ b), and lean's fold (`gemv.gemv`'s forms, and `gemv_int4.launch`'s `squares` and
        `rms_parts`)."""
        return gemv_int4.gemv_int4(
            x.reshape(-1), self.qweight, self.scales, self.zeros, self.bias, self.group_size, *self.blocks,
            pdl=self.pdl, rms=rms, eps=eps, residual=residual, scale_out=scale_out, silu=silu, squares=squares,
            rms_parts=rms_parts,
        )


class QbenchInt4Linear(QuantLinear):
    """From AWQ or GPTQ tensors (told apart by qweight's shape: AWQ [K, N/8], GPTQ [K/8, N]). Keeps a
    copy of them for the gate's reference until it ends; the kernel reads `qweight`, `scales`, `zeros`."""

    lean_fuser: ClassVar[type] = Int4Gemv  # lean fuses q, k, v (and gate, up) of these into one launch

    def __init__(self, tensors: dict[str, torch.Tensor], in_features, out_features, bias, group_size):
        super().__init__(in_features, out_features, bias, group_size)
        self.checkpoint = {name: t.detach().clone() for name, t in tensors.items()}
        qweight = tensors["qweight"]
        if tuple(qweight.shape) == (in_features, out_features // 8):
            self.source = "awq"
            packed = gemv_int4.from_awq(qweight, tensors["qzeros"], tensors["scales"])
        elif tuple(qweight.shape) == (in_features // 8, out_features):
            self.source = "gptq"
            g_idx = tensors.get("g_idx")
            packed = gemv_int4.from_gptq(qweight, tensors["qzeros"], tensors["scales"], g_idx, group_size)
        else:
            shape = tuple(qweight.shape)
            raise ValueError(f"qweight {shape} is neither AWQ's nor GPTQ's for {in_features} -> {out_features}")
        self.register_buffer("qweight", packed["qweight"])
        self.register_buffer("scales", packed["scales"])
        self.register_buffer("zeros", packed["zeros"])
        device = qweight.device
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
        hopper = gemv_int4.hopper(device)  # the backend's activations are bf16
        self.blocks = gemv_int4.choose_blocks(out_features, in_features, sms, group_size, hopper)

    def stored_tensors(self) -> list[torch.Tensor]:
        return [self.qweight, self.scales, self.zeros]

    def dequantize(self) -> torch.Tensor:
        held = {k: v for k, v in self.checkpoint.items() if k != "bias"}
        if self.source == "awq":
            return formats.awq_dequantize(held, self.group_size)
        return formats.gptq_dequantize(held, self.group_size)

    def kernel_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """qweight, scales, zeros as the kernels take them: where lean's fold interleaved this layer's
        rows with another's (strided views), a contiguous copy of each (a few MB: a prefill's, or an
        unfused call's, cost)."""
        qweight, scales, zeros = self.qweight, self.scales, self.zeros
        if not qweight.is_contiguous():
            qweight = qweight.contiguous()
        if not gemv_int4.one_layout(scales, zeros):
            scales, zeros = gemv_int4.group_major(scales), gemv_int4.group_major(zeros)
        return qweight, scales, zeros

    def kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        qweight, scales, zeros = self.kernel_tensors()
        if flat.shape[0] == 1:
            out = gemv_int4.gemv_int4(flat[0], qweight, scales, zeros, self.bias, self.group_size, *self.blocks)
        else:  # prefill: dequantise the packed weight (the kernel's own tensors) and multiply
            dequantize = gemv_int4.dequantize_triton if qweight.is_cuda else gemv_int4.dequantize_as
            weight = dequantize(qweight, scales, zeros, self.group_size, x.dtype)
            out = F.linear(flat, weight, self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)


class QbenchInt4Backend(PackedFormatBackend):
    name = "qbench-int4"
    description = "qbench's own 4-bit GEMV (Triton; AWQ/GPTQ tensors repacked at load), bf16"
    kernel = "qbench_int4_gemv_kernel (qbench/runtimes/kernels/gemv_int4.py); prefill: dequantise + F.linear"
    kernel_pattern = "qbench_int4_gemv"
    compute_dtype = "bfloat16"
    bits = 4
    requires_cuda = True  # never emulated: the tests run the kernel under Triton's interpreter instead
    min_capability = (8, 0)  # bf16 Triton kernels
    packages = {"triton": "triton"}
    lean_compile = True  # a custom op with a fake: torch.compile keeps it as one call

    def linear_bytes(self, in_features: int, out_features: int, group_size: int) -> int:
        return gemv_int4.bytes_read(in_features, out_features, group_size)

    def quantize_tensors(self, weight: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
        return formats.awq_quantize(weight, group_size)

    def make_linear(self, tensors, in_features, out_features, bias, group_size) -> QbenchInt4Linear:
        return QbenchInt4Linear(tensors, in_features, out_features, bias, group_size)
