"""The step's small kernels as lean's own, for an unbroken chain of programmatic dependent launches.

With QBENCH_LEAN_PDL=on lean's GEMVs and attention start while the kernel before them finishes
(`overlap.py`); a kernel that torch.compile generates for the norms, the residual adds and the SiLU
product is launched as usual, so the kernel after it cannot start early. Here those are two small
Triton kernels of qbench's own, launched like the rest:

  add_rmsnorm(hidden, delta, weight, eps) -> (hidden + delta, rmsnorm(hidden + delta) * weight)
      one program over the hidden size: the residual add rounded to the activations' dtype, then
      Llama's and Qwen2's RMSNorm exactly as transformers writes it (float32 mean of squares, rsqrt,
      the normalised value rounded to the activations' dtype, times the weight);
  silu_mul(gate_up) -> silu(gate) * up
      gate and up side by side (lean's fused launch gives them so); silu rounded to the activations'
      dtype before the product, as `act_fn(gate) * up` in 16 bits is.

Each is a custom op (torch.compile keeps it as one call). Triton's interpreter runs them on the CPU for
the tests, where its float32 -> bf16 conversion truncates (a GPU rounds to nearest): each rounding
the kernels make can then be one unit in the last place off, and the tests allow what those add up to.
"""

from __future__ import annotations

import functools

import torch

from qbench.runtimes.kernels import next_power_of_2, overlap

SILU_BLOCK = 1024  # elements of the SiLU product a program


@functools.lru_cache(maxsize=1)
def _kernels():
    import triton
    import triton.language as tl

    helpers = overlap.jit()
    prefetch_l2, after_previous = helpers.prefetch_l2, helpers.after_previous

    @triton.jit
    def add_rmsnorm_kernel(
        H, D, W, OUT_H, OUT_X, N, eps,
        HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False,
    ):
        offsets = tl.arange(0, BLOCK)
        inside = offsets < N
        if PDL:  # the norm's weight is constant; the hidden state is the kernel before's
            prefetch_l2(W + tl.minimum(offsets, N - 1))
            after_previous()
        h = tl.load(H + offsets, mask=inside, other=0.0)
        if HAS_DELTA:  # hidden + delta in the activations' dtype, as the step's add is
            h = (h.to(tl.float32) + tl.load(D + offsets, mask=inside, other=0.0).to(tl.float32)).to(h.dtype)
        tl.store(OUT_H + offsets, h, mask=inside)  # a copy without delta: an op's output is its own tensor
        value = h.to(tl.float32)
        mean_square = tl.sum(value * value, axis=0) / N
        normalised = (value * (1.0 / tl.sqrt(mean_square + eps))).to(h.dtype)
        weight = tl.load(W + offsets, mask=inside, other=0.0)
        tl.store(OUT_X + offsets, (weight.to(tl.float32) * normalised.to(tl.float32)).to(h.dtype), mask=inside)

    @triton.jit
    def silu_mul_kernel(GU, OUT, SIZE, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
        if PDL:  # both inputs are the kernel before's
            after_previous()
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < SIZE
        gate = tl.load(GU + offsets, mask=inside, other=0.0)
        up = tl.load(GU + SIZE + offsets, mask=inside, other=0.0)
        g = gate.to(tl.float32)
        silu = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
        tl.store(OUT + offsets, (silu.to(tl.float32) * up.to(tl.float32)).to(gate.dtype), mask=inside)

    return add_rmsnorm_kernel, silu_mul_kernel


@torch.library.custom_op("qbench::add_rmsnorm", mutates_args=())
def add_rmsnorm(
    hidden: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float, pdl: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden, delta [N] (delta may be None: the first layer's norm, then the first output is a copy of
    hidden); weight [N]. Returns (hidden + delta, RMSNorm of it times weight), both [N] in hidden's
    dtype. `pdl`: a programmatic dependent launch."""
    hidden = hidden.contiguous().view(-1)
    n = hidden.numel()
    if weight.numel() != n or (delta is not None and delta.numel() != n):
        raise ValueError(f"add_rmsnorm needs hidden, delta and weight of {n} elements")
    summed, out = torch.empty_like(hidden), torch.empty_like(hidden)
    add_rmsnorm_kernel, _ = _kernels()
    add_rmsnorm_kernel[(1,)](
        hidden, delta.contiguous().view(-1) if delta is not None else hidden, weight, summed, out, n, eps,
        HAS_DELTA=delta is not None, BLOCK=next_power_of_2(n), PDL=pdl, num_warps=8 if n > 2048 else 4,
        **overlap.launch_options(pdl),
    )
    return summed, out


@add_rmsnorm.register_fake
def _(hidden, delta, weight, eps, pdl=False):
    flat = hidden.new_empty(hidden.numel())
    return flat, torch.empty_like(flat)


@torch.library.custom_op("qbench::silu_mul", mutates_args=())
def silu_mul(gate_up: torch.Tensor, pdl: bool = False) -> torch.Tensor:
    """gate_up [2 I] (gate, then up). Returns silu(gate) * up [I] in its dtype."""
    gate_up = gate_up.contiguous().view(-1)
    size = gate_up.numel() // 2
    out = gate_up.new_empty(size)
    _, silu_mul_kernel = _kernels()
    silu_mul_kernel[(-(-size // SILU_BLOCK),)](
        gate_up, out, size, BLOCK=SILU_BLOCK, PDL=pdl, num_warps=4, **overlap.launch_options(pdl)
    )
    return out


@silu_mul.register_fake
def _(gate_up, pdl=False):
    return gate_up.new_empty(gate_up.numel() // 2)


def own_norm(module: torch.nn.Module) -> bool:
    """Whether `module` is the RMSNorm add_rmsnorm computes: Llama's, Qwen2's and their kin's
    (`variance_epsilon`, weight times the normalised value), not Gemma's (1 + weight)."""
    name = type(module).__name__
    weight = getattr(module, "weight", None)
    return (
        name.endswith("RMSNorm") and "Gemma" not in name
        and isinstance(getattr(module, "variance_epsilon", None), float)
        and isinstance(weight, torch.Tensor) and weight.dim() == 1
    )
