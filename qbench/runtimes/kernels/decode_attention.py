"""Split-K decode attention (flash-decoding) for `lean`: one new position's query heads against a
static KV cache, grouped-query, in two small Triton kernels.

Why: for one query position SDPA's fused kernels parallelise over (batch, heads, query blocks); with
each kv head's group of query heads in the query-length place that is one block per kv head (4 on
Qwen2.5-7B), so one SM reads a whole head's cache while the others idle: on the H100 at ctx 2048,
many times the cache's read time (results/h100/runtimes/README.md holds the figure). Here the cache positions are
split into chunks instead, one program per (kv head, chunk):

  1. `decode_attention_partial`: a program loads its kv head's group of query heads ([group, head_dim], padded to
     16 rows for the tensor-core dot), walks its chunk of K and V up to the current position (later
     positions are neither read nor counted), and keeps the online-softmax state in float32: the
     running maximum m, the sum l of exp(score - m) and the unnormalised output acc;
  2. `decode_attention_combine`: one program per query head and block of its dims rescales the chunks' states
     (those up to the position's) to their common maximum and writes sum(acc_i * w_i) / sum(l_i * w_i),
     w_i = exp(m_i - max m), in the cache's dtype.

With `fused` (lean's QBENCH_LEAN_COMBINE=fused) there is one launch: each program of the partial kernel
that held positions adds one to its kv head's arrival counter (acquire-release, after its states are
stored), and the one that arrives last combines every chunk's state for the group's query heads
(FUSED_SPLITS chunks loaded at a time, an online rescale as the maximum grows) and resets the counter
for the next call. The partial kernel stores the group's rows only (its padding rows, up to 16 for
the tensor-core dot, are never read).

Every kv head's K and V are read once and never expanded to the query heads. The position is a
device tensor, so a captured CUDA graph replays the same launches at every step; chunks wholly past
the position read and write nothing, and the combine reads only the chunks up to the position's, so
a cache with room beyond the positions the chunks are sized for (lean's energy window) costs the
steps before it nothing but those programs' launch. The result is registered as the custom op
`qbench::decode_attention` so torch.compile treats it as one opaque call inside a compiled step.

With `pdl` (lean's QBENCH_LEAN_PDL=on) both are programmatic dependent launches (`overlap.py`): the
partial kernel's programs ask L2 for their chunk's cached rows before waiting for q's kernel.

Triton is imported lazily: `available()` says whether this path can run here and, if not, why; the
runner then uses SDPA and records that in its notes.
"""

from __future__ import annotations

import functools
import math

import torch

from qbench.runtimes.kernels import next_power_of_2, overlap

BLOCK_N = 32  # cache positions per inner iteration of a program
MIN_ROWS = 16  # tl.dot needs at least 16 rows: the group of query heads is padded to this
COMBINE_DIMS = 32  # head dims a combine program sums (a head of 128: four programs)
COMBINE_SPLITS = 64  # chunks a combine program loads at once ([64, 32] float32: 16 values a thread)
FUSED_SPLITS = 8  # chunks the fused path's last program loads at once ([8, group, head dim] float32)


@functools.lru_cache(maxsize=1)
def available() -> str | None:
    """None when the Triton path can run on CUDA here, else the reason it cannot."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as error:  # ImportError, or a Triton that cannot load its backend
        return f"Triton not importable ({type(error).__name__}: {error})"
    return None


@functools.lru_cache(maxsize=1)
def _kernels():
    import triton
    import triton.language as tl

    helpers = overlap.jit()
    prefetch_l2, after_previous = helpers.prefetch_l2, helpers.after_previous
    line_elements = tl.constexpr(overlap.LINE // 2)  # a 16-bit cache's elements in an L2 line

    @triton.jit
    def decode_attention_partial(
        Q, K, V, POS, ACC, M, L, KNEW, VNEW, COS, SIN, COUNT, OUT,
        stride_kh, stride_kn, positions_total,
        scale,
        GROUP: tl.constexpr, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, DIM: tl.constexpr,
        CHUNK: tl.constexpr, BLOCK: tl.constexpr, SPLITS: tl.constexpr, ROPE: tl.constexpr = False,
        PDL: tl.constexpr = False, FUSED: tl.constexpr = False, GROUP_P2: tl.constexpr = 1,
        FUSED_SPLITS: tl.constexpr = 8,
    ):
        head = tl.program_id(0)
        split = tl.program_id(1)
        if PDL:  # this chunk's cached K and V rows (written by earlier steps), then wait for q's kernel;
            # the position read here only aims the prefetch (a hint: a stale one costs nothing but time)
            last_cached = tl.minimum(tl.load(POS), positions_total - 1)
            lines = tl.minimum(tl.arange(0, (DIM + line_elements - 1) // line_elements) * line_elements, HEAD_DIM - 1)
            for first in range(split * CHUNK, split * CHUNK + CHUNK, BLOCK):
                cached = tl.minimum(first + tl.arange(0, BLOCK), last_cached)
                rows_at = head * stride_kh + cached[:, None] * stride_kn + lines[None, :]
                prefetch_l2(K + rows_at)
                prefetch_l2(V + rows_at)
            after_previous()
        position = tl.load(POS)
        rows = tl.arange(0, ROWS)
        dims = tl.arange(0, DIM)
        start = split * CHUNK
        live = (rows * 0 + start) <= position  # [ROWS]: a chunk wholly past the position reads and writes nothing
        row_ok = (rows < GROUP) & live
        dim_ok = dims < HEAD_DIM
        q_rows = Q + (head * GROUP + rows)[:, None] * HEAD_DIM
        q_mask = row_ok[:, None] & dim_ok[None, :]
        if ROPE:  # Q, KNEW: q and this step's k before their rotary embedding (`decode_attention_rope`)
            # x * cos + rotate_half(x) * sin at this position, in float32, rounded to the cache's dtype
            # (as the compiled step's rope is); rotate_half(x)[d] = -x[d + h] below h, x[d - h] from h
            half: tl.constexpr = HEAD_DIM // 2
            partner = tl.where(dims < half, dims + half, dims - half)
            sign = tl.where(dims < half, -1.0, 1.0)
            cos = tl.load(COS + position * HEAD_DIM + dims, mask=dim_ok, other=0.0).to(tl.float32)
            sin = tl.load(SIN + position * HEAD_DIM + dims, mask=dim_ok, other=0.0).to(tl.float32)
            q_in = tl.load(q_rows + dims[None, :], mask=q_mask, other=0.0).to(tl.float32)
            q_pair = tl.load(q_rows + partner[None, :], mask=q_mask, other=0.0).to(tl.float32)
            q = (q_in * cos[None, :] + sign[None, :] * q_pair * sin[None, :]).to(K.dtype.element_ty)
            k_in = tl.load(KNEW + head * HEAD_DIM + dims, mask=dim_ok, other=0.0).to(tl.float32)
            k_pair = tl.load(KNEW + head * HEAD_DIM + partner, mask=dim_ok, other=0.0).to(tl.float32)
            k_new = (k_in * cos + sign * k_pair * sin).to(K.dtype.element_ty)
            v_new = tl.load(VNEW + head * HEAD_DIM + dims, mask=dim_ok, other=0.0).to(K.dtype.element_ty)
        else:
            q = tl.load(q_rows + dims[None, :], mask=q_mask, other=0.0)
        m = tl.full([ROWS], float("-inf"), tl.float32)
        l_sum = tl.zeros([ROWS], tl.float32)
        acc = tl.zeros([ROWS, DIM], tl.float32)
        end = tl.minimum(start + CHUNK, position + 1)  # the positions written so far, this chunk's part
        k_base = K + head * stride_kh
        v_base = V + head * stride_kh
        for first in range(start, end, BLOCK):
            positions = first + tl.arange(0, BLOCK)
            seen = positions < end
            offsets = positions[:, None] * stride_kn + dims[None, :]
            k = tl.load(k_base + offsets, mask=seen[:, None] & dim_ok[None, :], other=0.0)
            if ROPE:  # the position's row is this step's k (its slot is written after the loop)
                k = tl.where((positions == position)[:, None], k_new[None, :], k)
            scores = tl.dot(q, tl.trans(k)) * scale  # [ROWS, BLOCK], float32
            scores = tl.where(seen[None, :], scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, 1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(scores - m_new[:, None])
            l_sum = l_sum * alpha + tl.sum(p, 1)
            v = tl.load(v_base + offsets, mask=seen[:, None] & dim_ok[None, :], other=0.0)
            if ROPE:
                v = tl.where((positions == position)[:, None], v_new[None, :], v)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m = m_new
        if ROPE:  # the program whose chunk holds the position writes this step's k and v into the cache, for
            # the steps after (no other program reads that row; this one took it from registers, above)
            first_here = dims * 0 + start  # [DIM], as `live` (a scalar mask does not broadcast everywhere)
            owner = dim_ok & (first_here <= position) & (position < first_here + CHUNK)
            slot = head * stride_kh + position * stride_kn + dims
            tl.store(K + slot, k_new, mask=owner)
            tl.store(V + slot, v_new, mask=owner)
        state = (head * SPLITS + split) * ROWS + rows
        tl.store(M + state, m, mask=live)
        tl.store(L + state, l_sum, mask=live)
        # the group's rows only: the padding rows' outputs are never read (half the states' bytes at a group of 7)
        tl.store(ACC + state[:, None] * DIM + dims[None, :], acc, mask=row_ok[:, None] & (dims < DIM)[None, :])
        if FUSED:  # the last live program of this kv head to arrive combines every chunk's state
            if start <= position:
                tl.debug_barrier()  # every thread's stores issued before the counter says this chunk is done
                used = tl.minimum(position // CHUNK + 1, SPLITS)
                if tl.atomic_add(COUNT + head, 1, sem="acq_rel") == used - 1:
                    tl.atomic_xchg(COUNT + head, 0)  # every live chunk has arrived: zero for the next call
                    group_rows = tl.arange(0, GROUP_P2)
                    group_ok = group_rows < GROUP
                    top = tl.full([GROUP_P2], float("-inf"), tl.float32)
                    total = tl.zeros([GROUP_P2], tl.float32)
                    out = tl.zeros([GROUP_P2, DIM], tl.float32)
                    for first_chunk in range(0, used, FUSED_SPLITS):  # online: rescaled as the maximum grows
                        chunks = first_chunk + tl.arange(0, FUSED_SPLITS)
                        chunk_ok = chunks < used
                        at = (head * SPLITS + chunks)[:, None] * ROWS + group_rows[None, :]  # [chunks, rows]
                        chunk_m = tl.load(M + at, mask=chunk_ok[:, None], other=float("-inf"))
                        chunk_l = tl.load(L + at, mask=chunk_ok[:, None], other=0.0)
                        chunk_acc = tl.load(
                            ACC + at[:, :, None] * DIM + dims[None, None, :],
                            mask=(chunk_ok[:, None] & group_ok[None, :])[:, :, None], other=0.0,
                        )
                        new_top = tl.maximum(top, tl.max(chunk_m, 0))  # finite: chunk 0 holds position 0
                        weight = tl.where(chunk_ok[:, None], tl.exp(chunk_m - new_top[None, :]), 0.0)
                        alpha = tl.exp(top - new_top)
                        total = total * alpha + tl.sum(chunk_l * weight, 0)
                        out = out * alpha[:, None] + tl.sum(chunk_acc * weight[:, :, None], 0)
                        top = new_top
                    out_at = OUT + (head * GROUP + group_rows)[:, None] * HEAD_DIM + dims[None, :]
                    tl.store(out_at, (out / total[:, None]).to(OUT.dtype.element_ty),
                             mask=group_ok[:, None] & dim_ok[None, :])

    @triton.jit
    def decode_attention_combine(
        ACC, M, L, OUT, POS,
        GROUP: tl.constexpr, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, DIM: tl.constexpr,
        SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr, SPLIT_BLOCK: tl.constexpr, CHUNK: tl.constexpr,
        DIM_BLOCK: tl.constexpr, PDL: tl.constexpr = False,
    ):
        # One program per (query head, DIM_BLOCK of its dims): its row of every chunk's state, SPLIT_BLOCK
        # chunks at a time (a whole kv head's [chunks, group, head_dim] in one program spilled its
        # registers and was several times slower: results/h100/lean-splitk/README.md). One program per
        # query head walking every chunk of the cache (28 programs on Qwen2.5-7B, chunks past the
        # position included) cost more than the partial kernel at ctx 2048 on the H100, and as much at
        # every context (results/h100/int4/README.md); here the walk stops at the position's chunk and
        # a head's dims are split over programs.
        # Only the chunks up to the position's hold a state (the partial kernel writes no other).
        if PDL:  # every input is the partial kernel's: nothing to read before it completes
            after_previous()
        query = tl.program_id(0)
        dims = tl.program_id(1) * DIM_BLOCK + tl.arange(0, DIM_BLOCK)
        head = query // GROUP
        row = query % GROUP
        used = tl.minimum(tl.load(POS) // CHUNK + 1, SPLITS)
        splits = tl.arange(0, SPLITS_P2)
        split_ok = splits < used
        state = (head * SPLITS + splits) * ROWS + row
        m = tl.load(M + state, mask=split_ok, other=float("-inf"))
        top = tl.max(m, 0)  # finite: chunk 0 always holds position 0
        weight = tl.where(split_ok, tl.exp(m - top), 0.0)
        total = tl.sum(tl.load(L + state, mask=split_ok, other=0.0) * weight, 0)
        out = tl.zeros([DIM_BLOCK], tl.float32)
        for first in range(0, used, SPLIT_BLOCK):
            block = first + tl.arange(0, SPLIT_BLOCK)
            block_ok = block < used
            block_state = (head * SPLITS + block) * ROWS + row
            block_m = tl.load(M + block_state, mask=block_ok, other=float("-inf"))
            block_weight = tl.where(block_ok, tl.exp(block_m - top), 0.0)
            acc = tl.load(ACC + block_state[:, None] * DIM + dims[None, :], mask=block_ok[:, None], other=0.0)
            out += tl.sum(acc * block_weight[:, None], 0)
        tl.store(OUT + query * HEAD_DIM + dims, (out / total).to(OUT.dtype.element_ty), mask=dims < HEAD_DIM)

    return decode_attention_partial, decode_attention_combine


def plan_splits(positions: int, kv_heads: int, programs: int) -> tuple[int, int]:
    """(chunk, splits): chunks of a multiple of BLOCK_N positions, as many as give about `programs`
    programs over the kv heads (at least one chunk, at most one per BLOCK_N positions)."""
    blocks = math.ceil(positions / BLOCK_N)
    splits = max(1, min(blocks, math.ceil(programs / kv_heads)))
    chunk = math.ceil(blocks / splits) * BLOCK_N
    return chunk, math.ceil(positions / chunk)


def decode_attention_reference(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, position: torch.Tensor, scale: float
) -> torch.Tensor:
    """What the kernels compute, in float32 with torch ops: q [heads, head_dim]; caches [kv heads,
    positions, head_dim]; positions 0..position attended; returns [heads, head_dim] in q's dtype."""
    kv_heads, _, head_dim = k_cache.shape
    group = q.shape[0] // kv_heads
    last = int(position.reshape(-1)[0]) + 1
    k, v = k_cache[:, :last].float(), v_cache[:, :last].float()
    grouped = q.float().view(kv_heads, group, head_dim)
    weights = torch.softmax(grouped @ k.transpose(1, 2) * scale, dim=-1)
    return (weights @ v).reshape(-1, head_dim).to(q.dtype)


_counters: dict[tuple, torch.Tensor] = {}


def _counter(device: torch.device, kv_heads: int) -> torch.Tensor:
    """The fused path's arrival counters (int32 [kv heads]), zero between calls: the last program resets its own."""
    key = (device, kv_heads)
    if key not in _counters:
        _counters[key] = torch.zeros(kv_heads, dtype=torch.int32, device=device)
    return _counters[key]


def _launch(
    q, k_cache, v_cache, position, scale: float, programs: int, planned: int, rope=None, pdl: bool = False,
    fused: bool = False,
) -> torch.Tensor:
    """`rope`: None (q is rotated, the cache holds the position's k and v), or (k, v, cos, sin): q and
    k before their rotary embedding, v, and the model's tables [positions, head_dim]; the kernel rotates
    them and writes k and v at the position. `pdl`: both kernels as programmatic dependent launches
    (`overlap.py`). `fused`: one launch, the last chunk of each kv head to finish combining them (an
    arrival counter a kv head) where the combine kernel would; not with `pdl`."""
    if fused and pdl:
        raise ValueError("decode_attention: the fused combine is not built for programmatic dependent launches")
    partial, combine = _kernels()
    kv_heads, positions, head_dim = k_cache.shape
    heads = q.shape[0]
    group = heads // kv_heads
    rows = max(MIN_ROWS, next_power_of_2(group))
    dim = max(16, next_power_of_2(head_dim))
    # chunks sized for `planned` positions; a cache with room beyond them gets more chunks of that size,
    # which do nothing while they lie past the position: the planned positions' steps work as without it
    chunk = plan_splits(planned or positions, kv_heads, programs)[0]
    splits = math.ceil(positions / chunk)
    states = kv_heads * splits * rows
    acc = torch.empty(states, dim, dtype=torch.float32, device=q.device)
    m = torch.empty(states, dtype=torch.float32, device=q.device)
    l_sum = torch.empty(states, dtype=torch.float32, device=q.device)
    out = torch.empty(heads, head_dim, dtype=q.dtype, device=q.device)
    k_new, v_new, cos, sin = rope if rope is not None else (q, q, q, q)
    count = _counter(q.device, kv_heads) if fused else m
    partial[(kv_heads, splits)](
        q, k_cache, v_cache, position, acc, m, l_sum, k_new, v_new, cos, sin, count, out,
        k_cache.stride(0), k_cache.stride(1), positions,
        scale,
        GROUP=group, ROWS=rows, HEAD_DIM=head_dim, DIM=dim, CHUNK=chunk, BLOCK=BLOCK_N, SPLITS=splits,
        ROPE=rope is not None, PDL=pdl, FUSED=fused, GROUP_P2=next_power_of_2(group), FUSED_SPLITS=FUSED_SPLITS,
        **overlap.launch_options(pdl),
    )
    if fused:
        return out
    dim_block = min(dim, COMBINE_DIMS)
    combine[(heads, dim // dim_block)](
        acc, m, l_sum, out, position,
        GROUP=group, ROWS=rows, HEAD_DIM=head_dim, DIM=dim, SPLITS=splits, SPLITS_P2=next_power_of_2(splits),
        SPLIT_BLOCK=COMBINE_SPLITS, CHUNK=chunk, DIM_BLOCK=dim_block, PDL=pdl, **overlap.launch_options(pdl),
    )
    return out


@torch.library.custom_op("qbench::decode_attention", mutates_args=())
def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    position: torch.Tensor,
    scale: float,
    programs: int,
    planned: int = 0,
    pdl: bool = False,
    fused: bool = False,
) -> torch.Tensor:
    """q [heads, head_dim] (contiguous); k_cache, v_cache [kv heads, positions, head_dim] with the
    head dim contiguous; position [1] int64 on the device: positions 0..position are attended.
    `programs`: about how many (kv head, chunk) programs to launch (twice the SM count is a good
    start). `planned`: the positions the chunks are sized for (0: the whole cache). `pdl`:
    programmatic dependent launches (`overlap.py`). `fused`: one launch, the combine done by each kv
    head's last chunk (`_launch`). Returns [heads, head_dim] in q's dtype."""
    if k_cache.stride(2) != 1 or v_cache.stride() != k_cache.stride():
        raise ValueError("decode_attention needs K and V caches of one layout with the head dim contiguous")
    return _launch(q.contiguous(), k_cache, v_cache, position, scale, programs, planned, pdl=pdl, fused=fused)


@decode_attention.register_fake
def _(q, k_cache, v_cache, position, scale, programs, planned=0, pdl=False, fused=False):
    return torch.empty_like(q)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x_a, x_b) -> (-x_b, x_a) over the last dim's halves: rotary embedding's partner term (lean's step
    and the reference below; the kernel's `partner` and `sign`)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., head_dim] rotated at one position (cos, sin [head_dim]) in float32: x cos + rotate_half(x) sin."""
    x = x.float()
    return x * cos.float() + rotate_half(x) * sin.float()


@torch.library.custom_op("qbench::decode_attention_rope", mutates_args=("kv_cache",))
def decode_attention_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: torch.Tensor,
    layer: int,
    cos: torch.Tensor,
    sin: torch.Tensor,
    position: torch.Tensor,
    scale: float,
    programs: int,
    planned: int = 0,
    pdl: bool = False,
    fused: bool = False,
) -> torch.Tensor:
    """`decode_attention` with the step's rotary embedding and cache write inside its first kernel:
    q [heads, head_dim], k and v [kv heads * head_dim] as the projections give them (q and k not yet
    rotated); kv_cache [layers, 2, kv heads, positions, head_dim] (lean's); cos, sin [positions,
    head_dim] (the model's tables). Rotates q and k at `position` (in float32, rounded to the cache's
    dtype), writes k and v into kv_cache[layer] at `position` and attends positions 0..position: two
    launches, where the step's rope and write took two or three more. Returns [heads, head_dim]."""
    heads, head_dim = q.shape
    if kv_cache.stride(-1) != 1 or cos.shape[-1] != head_dim or sin.shape != cos.shape:
        raise ValueError("decode_attention_rope needs a cache with the head dim contiguous and tables of head_dim")
    rope = (k.contiguous(), v.contiguous(), cos.contiguous(), sin.contiguous())
    return _launch(
        q.contiguous(), kv_cache[layer, 0], kv_cache[layer, 1], position, scale, programs, planned, rope, pdl, fused
    )


@decode_attention_rope.register_fake
def _(q, k, v, kv_cache, layer, cos, sin, position, scale, programs, planned=0, pdl=False, fused=False):
    return torch.empty_like(q)
