"""The end of a GEMV under lean's QBENCH_LEAN_FOLD=on, shared by lean's two GEMVs that fold (`gemv.py`,
`gemv_int4.py`; `gemv.gemv`'s docstring says what each form computes and how it rounds).

Triton at import: the kernels' modules import this inside their lazy `_kernel()`, so importing qbench
never imports Triton. A module-level @triton.jit function, which Triton's interpreter can call too.
"""

import triton
import triton.language as tl


@triton.jit
def store(y, Y, R, G, rows, row_ok, block, N, BLOCK_N: tl.constexpr, SILU: tl.constexpr, RESIDUAL: tl.constexpr,
          SCALE_OUT: tl.constexpr):
    """Store y ([BLOCK_N] float32, row block `block`, bias added) into Y: the SiLU product of its
    interleaved (gate, up) rows, or y plus the residual R and, after it, y times the next norm's
    weight G (at Y + N)."""
    dtype = Y.dtype.element_ty
    if SILU:  # rows interleaved (gate, up): silu(gate) * up, each rounded to Y's dtype as torch rounds them
        gate, up = tl.split(tl.reshape(y, (BLOCK_N // 2, 2)))
        gate = gate.to(dtype).to(tl.float32)
        act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32) * up.to(dtype).to(tl.float32)
        pairs = block * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        tl.store(Y + pairs, act.to(dtype), mask=pairs < N // 2)
    else:
        if RESIDUAL:  # the residual stream's add, on y rounded to its dtype as the model's add is
            y = y.to(dtype).to(tl.float32) + tl.load(R + rows).to(tl.float32)
        tl.store(Y + rows, y.to(dtype), mask=row_ok)
        if SCALE_OUT:  # the next norm's weight times its input, rounded: what the next GEMV reads as x
            scaled = y.to(dtype).to(tl.float32) * tl.load(G + rows).to(tl.float32)
            tl.store(Y + N + rows, scaled.to(dtype), mask=row_ok)
