"""The end of a GEMV under lean's QBENCH_LEAN_FOLD=on, shared by lean's two GEMVs that fold (`gemv.py`,
`gemv_int4.py`; `gemv.gemv`'s docstring says what each form computes and how it rounds).

Triton at import: the kernels' modules import this inside their lazy `_kernel()`, so importing qbench
never imports Triton. Module-level @triton.jit functions, which Triton's interpreter can call too.
"""

import triton
import triton.language as tl


@triton.jit
def inputs(B, R, G, rows, HAS_BIAS: tl.constexpr, RESIDUAL: tl.constexpr, SCALE_OUT: tl.constexpr):
    """The bias, residual and next norm's weight of a program's rows, as float32 [BLOCK_N] (zeros where
    not taken). A GEMV loads them before its loop (after a PDL wait), so their latency is not added
    after the sums, on the critical path, where `store` uses them."""
    zero = tl.zeros(rows.shape, dtype=tl.float32)
    b = tl.load(B + rows).to(tl.float32) if HAS_BIAS else zero
    r = tl.load(R + rows).to(tl.float32) if RESIDUAL else zero
    g = tl.load(G + rows).to(tl.float32) if SCALE_OUT else zero
    return b, r, g


@triton.jit
def store(y, Y, r, g, rows, row_ok, block, N, BLOCK_N: tl.constexpr, SILU: tl.constexpr, RESIDUAL: tl.constexpr,
          SCALE_OUT: tl.constexpr):
    """Store y ([BLOCK_N] float32, row block `block`, bias added) into Y: the SiLU product of its
    interleaved (gate, up) rows, or y plus the residual r and, after it, y times the next norm's
    weight g (at Y + N); r and g are `inputs`'. Returns y in float32 as stored at Y + rows (the
    residual added; as it came under SILU): rounded to Y's dtype it is h, whose sums of squares
    qbench-int4's GEMV stores for the next norm (`gemv_int4.py`'s SQUARES)."""
    dtype = Y.dtype.element_ty
    if SILU:  # rows interleaved (gate, up): silu(gate) * up, each rounded to Y's dtype as torch rounds them
        gate, up = tl.split(tl.reshape(y, (BLOCK_N // 2, 2)))
        gate = gate.to(dtype).to(tl.float32)
        act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32) * up.to(dtype).to(tl.float32)
        pairs = block * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        tl.store(Y + pairs, act.to(dtype), mask=pairs < N // 2)
    else:
        if RESIDUAL:  # the residual stream's add, on y rounded to its dtype as the model's add is
            y = y.to(dtype).to(tl.float32) + r
        tl.store(Y + rows, y.to(dtype), mask=row_ok)
        if SCALE_OUT:  # the next norm's weight times its input, rounded: what the next GEMV reads as x
            scaled = y.to(dtype).to(tl.float32) * g
            tl.store(Y + N + rows, scaled.to(dtype), mask=row_ok)
    return y
