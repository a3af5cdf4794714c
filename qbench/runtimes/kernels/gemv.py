"""A 16-bit GEMV for `lean`'s one-position step: y = W x (+ b) for x of one row, in one Triton kernel.

Why: at batch 1 a 16-bit linear layer is a matrix-vector product, bound by reading W once. cuBLAS
reads the large ones below the H100's measured copy bandwidth and the small k and v projections
(512 x 3584) at a fraction of it; together they are most of lean bf16's GPU time a step at 7B
(results/h100/lean-splitk/README.md holds the figures). Here each program owns BLOCK_N output rows, walks K in
BLOCK_K pieces reading its rows contiguously, keeps a float32 [BLOCK_N, BLOCK_K] partial sum and
reduces it once at the end; the bias is added before the store. With a concatenated weight one
launch does q, k and v (or gate and up) of a layer.

Triton is imported lazily; `gemv` is the custom op `qbench::gemv`, so torch.compile keeps it as one
call inside a compiled step, and a captured CUDA graph replays it like any kernel. With `pdl` (lean's
QBENCH_LEAN_PDL=on) it is launched as a programmatic dependent launch: each program asks L2 for its
rows (all of them where the weight takes at most half the L2, else their first tile) before waiting
for the kernel before it (`overlap.py`). With lean's QBENCH_LEAN_FOLD=on it also takes over the
small kernels around it: an RMSNorm of its input (the scale applied once after the loop), the SiLU
product of a (gate, up) input, and the residual add of its output (`gemv`'s docstring says how each
is rounded).
"""

from __future__ import annotations

import functools

import torch

from qbench.runtimes.kernels import overlap


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    global fold  # a module global, not a closure's: Triton's interpreter resolves a kernel's helpers there
    from qbench.runtimes.kernels import fold

    helpers = overlap.jit()
    prefetch_l2, after_previous = helpers.prefetch_l2, helpers.after_previous
    line_elements = tl.constexpr(overlap.LINE // 2)  # 16-bit weights in an L2 line

    @triton.jit
    def gemv_kernel(
        X, W, B, Y, N, K, stride_w, AHEAD, H, R, G, eps,
        HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
        PDL: tl.constexpr = False, RMS: tl.constexpr = False, SILU: tl.constexpr = False,
        RESIDUAL: tl.constexpr = False, SCALE_OUT: tl.constexpr = False,
    ):
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        rows = tl.where(row_ok, rows, 0)  # out-of-range rows re-read row 0 and are not stored
        cols = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        w_ptrs = W + rows[:, None] * stride_w + cols[None, :]
        if PDL:  # the rows' first AHEAD inputs' lines (the weight is constant), then wait for x's kernel
            lines = tl.arange(0, BLOCK_K // line_elements) * line_elements
            for k0 in range(0, AHEAD, BLOCK_K):
                prefetch_l2(W + rows[:, None] * stride_w + tl.minimum(k0 + lines, K - 1)[None, :])
            after_previous()
        bias, residual, weight_next = fold.inputs(B, R, G, rows, HAS_BIAS, RESIDUAL, SCALE_OUT)  # before the loop
        squares = tl.zeros((BLOCK_K,), dtype=tl.float32)  # RMS: h's sum of squares, each program all of it
        for k0 in range(0, K, BLOCK_K):
            inside = (k0 + cols) < K
            if EVEN_K:
                w = tl.load(w_ptrs, eviction_policy="evict_first")
                x = tl.load(X + k0 + cols).to(tl.float32)
            else:
                w = tl.load(w_ptrs, mask=inside[None, :], other=0.0, eviction_policy="evict_first")
                x = tl.load(X + k0 + cols, mask=inside, other=0.0).to(tl.float32)
            if RMS:
                h = tl.load(H + k0 + cols, mask=inside, other=0.0).to(tl.float32)
                squares += h * h
            acc += w.to(tl.float32) * x[None, :]
            w_ptrs += BLOCK_K
        y = tl.sum(acc, axis=1)
        if RMS:  # x is h times the norm's weight; the RMS scale, one number for the whole h, here
            y = y * tl.rsqrt(tl.sum(squares, axis=0) / K + eps)
        if HAS_BIAS:
            y += bias
        fold.store(y, Y, residual, weight_next, rows, row_ok, pid, N, BLOCK_N, SILU, RESIDUAL, SCALE_OUT)

    return gemv_kernel


# The kernel's arguments as Triton's compiler takes them, in order (the tests compile it for sm_90)
SIGNATURE = {
    "X": "*bf16", "W": "*bf16", "B": "*bf16", "Y": "*bf16", "N": "i32", "K": "i32", "stride_w": "i32", "AHEAD": "i32",
    "H": "*bf16", "R": "*bf16", "G": "*bf16", "eps": "fp32", "HAS_BIAS": "constexpr", "BLOCK_N": "constexpr",
    "BLOCK_K": "constexpr", "EVEN_K": "constexpr", "PDL": "constexpr", "RMS": "constexpr", "SILU": "constexpr",
    "RESIDUAL": "constexpr", "SCALE_OUT": "constexpr",
}


INTERPRETED_ROWS = 64  # BLOCK_N under Triton's interpreter (`choose_blocks`)


def choose_blocks(n: int, k: int, sms: int, interpreted: bool = False) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, warps): the fewest rows a program that still gives every SM several
    programs (so enough loads are in flight), and a K piece of 512 (1024 for a long K, 256 for a
    short one). From the block sweep on the H100 (results/h100/lean-gemv/gemv10.json): down_proj
    (K = 18944) reads faster with 1024 than with 512. `interpreted` (lean on a CPU under
    TRITON_INTERPRET=1, which only the tests run): INTERPRETED_ROWS rows a program, since the
    interpreter runs the programs one after another and its time is per program, not per row; the
    arithmetic is the same at any BLOCK_N (tests/test_gemv.py runs several)."""
    block_k = 1024 if k >= 8192 else 512 if k >= 2048 else 256
    if interpreted:
        return INTERPRETED_ROWS, block_k, 4
    block_n = 8
    while block_n > 1 and -(-n // block_n) < 4 * sms:
        block_n //= 2
    return block_n, block_k, 4


def launch(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, blocks: tuple[int, ...], pdl: bool = False,
    rms: torch.Tensor | None = None, eps: float = 0.0, residual: torch.Tensor | None = None,
    scale_out: torch.Tensor | None = None, silu: bool = False,
) -> torch.Tensor:
    n, k = weight.shape
    block_n, block_k, warps = blocks
    if silu:
        block_n = max(block_n, 2)  # a program's rows are whole (gate, up) pairs
    # with pdl: the inputs of its rows a program asks L2 for before its wait (all, or the first tile)
    ahead = (k if overlap.whole(weight.numel() * weight.element_size(), weight.device) else block_k) if pdl else 0
    y = torch.empty(out_size(n, scale_out, silu), dtype=x.dtype, device=x.device)
    _kernel()[(-(-n // block_n),)](
        x, weight, bias if bias is not None else weight, y, n, k, weight.stride(0), ahead,
        rms if rms is not None else weight, residual if residual is not None else weight,
        scale_out if scale_out is not None else weight, eps,
        HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_K=block_k, EVEN_K=k % block_k == 0,
        PDL=pdl, RMS=rms is not None, SILU=silu, RESIDUAL=residual is not None, SCALE_OUT=scale_out is not None,
        num_warps=warps, **overlap.launch_options(pdl),
    )
    return y


def check_fold(n: int, k: int, x: torch.Tensor, rms, residual, scale_out, silu: bool) -> None:
    """The fold's arguments (both GEMVs' ops take them: `gemv`'s docstring): sizes, and no SiLU with
    an output of N rows."""
    if x.numel() != k or (rms is not None and rms.numel() != k):
        raise ValueError(f"the GEMV needs x (and rms) of {k} elements, got {x.numel()}")
    if (residual is not None and residual.numel() != n) or (scale_out is not None and scale_out.numel() != n):
        raise ValueError(f"the GEMV needs a residual and scale_out of {n} elements")
    if silu and (n % 2 or residual is not None or scale_out is not None):
        raise ValueError("the GEMV's SiLU takes interleaved (gate, up) rows, an even N, and no residual or scale_out")


def out_size(n: int, scale_out, silu: bool) -> int:
    """The fold's output elements: N, N/2 (silu: one a (gate, up) pair) or 2N (scale_out: y, then y times it)."""
    return n // 2 if silu else 2 * n if scale_out is not None else n


@torch.library.custom_op("qbench::gemv", mutates_args=())
def gemv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, block_n: int, block_k: int, warps: int,
    pdl: bool = False, rms: torch.Tensor | None = None, eps: float = 0.0, residual: torch.Tensor | None = None,
    scale_out: torch.Tensor | None = None, silu: bool = False,
) -> torch.Tensor:
    """x [K] (contiguous), weight [N, K] with K contiguous, bias [N] or None; returns [N] in x's dtype.
    `pdl`: a programmatic dependent launch (CUDA, compute capability 9+; `overlap.py`).

    What lean's QBENCH_LEAN_FOLD=on folds in (each None or False: not done), in qbench-int4's GEMV too:
    - `rms` [K], `eps`: an RMSNorm's scale. x is then the norm's input h times the norm's weight
      (what the GEMV before made with `scale_out`), and y = rsqrt(mean(h^2) + eps) W x (+ b): float32
      throughout, where the model rounds the normalised h to x's dtype before the weight multiplies it;
    - `silu`: the rows are interleaved (gate, up) pairs; returns silu(gate) * up [N/2], each of gate,
      up, silu(gate) and the product rounded to x's dtype as the model's tensors are;
    - `residual` [N]: y = residual + W x, W x rounded to x's dtype first (as the model adds);
    - `scale_out` [N]: returns [2N], y and then y times scale_out rounded: the next norm's input times
      its weight, the next GEMV's x."""
    n, k = weight.shape
    if weight.stride(1) != 1:
        raise ValueError("gemv needs a weight with K contiguous")
    check_fold(n, k, x, rms, residual, scale_out, silu)
    return launch(
        x.contiguous().view(-1), weight, bias, (block_n, block_k, warps), pdl,
        None if rms is None else rms.contiguous().view(-1), eps,
        None if residual is None else residual.contiguous().view(-1),
        None if scale_out is None else scale_out.contiguous().view(-1), silu,
    )


@gemv.register_fake
def _(x, weight, bias, block_n, block_k, warps, pdl=False, rms=None, eps=0.0, residual=None, scale_out=None,
      silu=False):
    return x.new_empty(out_size(weight.shape[0], scale_out, silu))
