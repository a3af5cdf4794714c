"""qbench's own 4-bit weight GEMV (`qbench-int4`): y = x W^T (+ b) for one activation row, in Triton.

W is asymmetric 4-bit with a scale and a zero point per group of `group_size` (128 or 64) inputs:
w[n, k] = (q[n, k] - zero[n, k // g]) * scale[n, k // g]. Activations are 16-bit, products are summed
in float32.

Layout (what `pack` produces; a published AWQ or GPTQ checkpoint is repacked into it once, at load):
  qweight  int32 [N, K/8]   row n holds its K inputs group by group, eight to a word; within a group
                            of W = g/8 words, the input pair (2p, 2p + 1), p = j*W + w (j = 0..3),
                            is nibbles j and j + 4 (bits 4j.. and 16 + 4j..) of word w: the two
                            nibbles the bf16x2 word dequantises as one pair meet one 32-bit word of
                            x (two bf16 inputs side by side), and nibble j of a group's words meets
                            x's words j*W .. j*W + W - 1, one contiguous run (one 128-bit load of x
                            for four words). K is contiguous per output row, so a program reading BLOCK_N rows
                            reads each row as one contiguous run; four words are one 128-bit load
                            (K/8 is passed as its own argument, so Triton sees it divisible by 16
                            and proves row starts 16-byte aligned).
  scales   fp16  [N, K/g]   as the checkpoint stores them (fp16 -> fp32 is exact, so repacking is exact)
  zeros    uint8 [N, K/g]   the integer zero point (0..16: GPTQ v1's "zero - 1" of 0 wraps to 16)
                            Both group-major in memory (strides (1, N): one group's scales of all
                            rows side by side, as AWQ and GPTQ store them): a program's BLOCK_N rows'
                            scales of one group are one contiguous run, so a warp's scale load touches
                            one or two 128-byte lines, where [N, K/g] row-major touched one line a row
                            (eight a load: more L1 wavefronts than the weights' own loads). The kernel
                            takes the strides, so either layout runs; `group_major` makes this one.
Why this order, not AWQ's [K, N/8] (eight outputs to a word) or GPTQ's [K/8, N]: at batch 1 every
weight is read once, so what matters is that each program's loads are long, contiguous and wide,
and that a thread unpacks words whose eight values all meet the same activation slice and the same
group's scale and zero. With K inner, a program walks its rows' groups in order and loads a group's
scale and zero once (one value per row), not once per element.

Unpacking: the nibble i of a word is `(w >> 4i) & 0xF`; OR-ing 0x4B000000 (float32 2^23) into it
and reinterpreting the bits gives the float 2^23 + q exactly, and subtracting 2^23 + zero (one value
per row and group) gives q - zero exactly, with no integer-to-float conversion per element. The
kernel takes nibble i of all the [BLOCK_N, words] words of a group at once (eight passes), so every
tensor keeps the layout of the 128-bit load (no reshape, no layout conversion through shared
memory); nibble i's inputs of x are every other element of one contiguous run (L1 holds it for
every row block). Per element: a shift, a
mask-and-or, a subtraction, a fused multiply-add; each word's sum over its group is multiplied by the
group's scale (once a word), and the words of a row are summed once, at the end. Compiled for sm_90
that is about 5.5 instructions a weight (ptxas turns the shift and mask into a shift, a zero-extend
and a lop3; `tools/int4_sass.py` counts them on any machine). The 4-bit GEMVs read below the copy
rate (results/h100/int4), yet the paired layout's cut in the bf16x2 variant's instructions a weight
barely changed their time (results/h100/step4): they are not bound by issuing instructions either.

The bf16x2 variant (`blocks`' fifth element, Hopper and bf16 activations only): the same layout,
each word's eight weights dequantised and multiplied in bf16 pairs by a few lines of inline PTX
(`BF16X2_WORD`, the trick Marlin and FasterTransformer use: a lop3 makes two nibbles a bf16 pair),
about 3.1 instructions a weight at 32 rows and 4 warps (4.6 before the layout paired adjacent inputs
and x was read as 32-bit words, 2.9 against 3.6 at 64 rows: `tools/int4_sass.py`, static SASS counts,
not timings), at bf16 precision for the products and a word's sums. Triton's
interpreter cannot run PTX: the CPU tests check its arithmetic on a model of each instruction and
compile it for sm_90; only a GPU session shows its speed, and the gate checks its outputs there.
The swept table names it where a sweep measured it faster.

Tiles (`blocks`' sixth element; 0 unless named). Tile 0 loads an iteration's GROUPS groups as GROUPS
[BLOCK_N, WORDS] loads, and compiled for sm_90 each group's 128-bit weight load sits after the group
before's arithmetic (`tools/int4_sass.py`'s SASS): a thread has one weight load in flight at a time.
Tile 1 loads the iteration as one [BLOCK_N, GROUPS, WORDS] tensor (GROUPS 128-bit loads a thread,
issued together; its sums keep a [BLOCK_N, GROUPS, WORDS] accumulator, so more registers), and tile 2
also loads the next iteration's weights, scales and zeros before this one's arithmetic (a register
double buffer; past a split's end it re-reads the split's last group, as the last iteration does).
Same arithmetic and layout in all three; which is faster on a GPU is the sweep's to say (on the
H100 the tiles won every shape, most the large ones: results/h100/step5, where the loads in flight,
not the instructions, turned out to bound these GEMVs).

Stages (`blocks`' seventh element; 1 unless named; tile 1 only). With STAGES > 1 tile 1's loop is a
`tl.range(..., num_stages=STAGES)`: Triton's software pipeliner turns the iteration's weight, scale
and zero loads into asynchronous copies (cp.async) into shared memory, issued STAGES - 1 iterations
ahead of the arithmetic that reads them (a ring of STAGES buffers a program), where tile 2 keeps one
iteration ahead in registers. Compiled for sm_90 the loop's global loads become cp.async and the
program takes shared memory for the ring (tests/test_gemv_int4.py checks both); Triton's interpreter
ignores num_stages, so on a CPU the arithmetic is tile 1's. Whether the deeper queue is faster is the
sweep's to say (`tools/device/int4_shapes.py`, STAGES=).

Split-K: a program owns BLOCK_N rows and one of SPLIT contiguous ranges of groups, GROUPS groups a
loop iteration (unrolled), so a shape with few rows (k/v: 512) still gives every SM several programs.
With SPLIT > 1 each program adds its float32 partial sums into a workspace with `atomic_add`; the
last program of a row block to arrive (an atomic counter per row block says which) takes the sums
with `atomic_xchg` (which also zeroes the workspace for the next call), adds the bias and stores y,
and resets the counter. Under lean's fold with an RMS scale (`gemv.gemv`'s `rms`), each program also
sums the squares of h over its own groups, loaded in its loop beside x, and adds them into its row
block's slot after the sums; the last program takes that slot the same way, so no program reads all
of h after its loop (step7 measured that tail on the critical path: results/h100/step7/). Reading h
beside x still cost q/k/v and gate+up time a call (results/h100/step8/), so the GEMV that writes h
(o, down: `scale_out`) can also store, with `squares`, each row block's sum of squares of the h it
stored (one float32 a row block, after y and y times g, overwritten every call: nothing to zero), and
the GEMV that reads it takes those sums as `rms` with `rms_parts` (PARTS: their count rounded up to a
power of two), loads them once before its loop and reads no h at all. The
workspace is allocated once per (device, N, BLOCK_N, SPLIT) and left zeroed by every call: no memset,
no host synchronisation, fixed pointers, so a CUDA graph replays it (the first call of a shape
allocates it, so it belongs before a capture: qbench's warm-up steps are).
Calls on one stream only (as qbench's runtimes make them): two GEMVs of the same shape running
concurrently on two streams would share a workspace.

`gemv_int4` is the custom op `qbench::gemv_int4` (with a fake), so torch.compile keeps it as one
opaque call inside a compiled step. Triton is imported lazily. Under TRITON_INTERPRET=1 it runs on
CPU tensors (the tests do); qbench itself runs it on CUDA only.
"""

from __future__ import annotations

import functools

import torch

from qbench.runtimes.kernels import gemv, next_power_of_2, overlap

MAGIC = 8388608.0  # 2^23: float32 bits 0x4B000000; OR-ing a nibble into the low mantissa bits adds it

# The bf16x2 variant's dequantise-and-multiply of one word (8 weights), PTX for sm_90: nibbles j and
# j + 4 of word $1 sit at bits 4j and 16 + 4j; shifted down by 4j and masked with 0x000F000F, OR-ed
# into 0x43004300 they are the bf16 pair (128 + q_j, 128 + q_j+4) in one instruction (lop3, LUT 0xEA
# = (a & b) | c); subtracting $6 = (128 + zero, 128 + zero) leaves q - zero exactly; each pair
# multiplies the activation pair $2..$5 = (x[2p], x[2p + 1]), p = j*W + w (one 32-bit word of x, as
# the layout places the inputs: `pack`) and the four pairs are summed
# in bf16 (mul, fma: one rounding each); the two halves are widened to float32 and added. With x's
# loads, about 2.7 instructions a weight against 5.6 for the float32 path (SASS for sm_90, 64 rows,
# 2 warps: tools/int4_sass.py, with the Triton it runs under); products
# and a word's four-pair sums are rounded to bf16's 8 bits (relative 2^-9 each), the words summed in
# float32. sub/mul.bf16x2 need sm_90, so the variant is for Hopper only.
BF16X2_WORD = """{
.reg .b32 t, q, a, lo, hi;
lop3.b32 q, $1, 983055, 1124090624, 234;
sub.rn.bf16x2 q, q, $6;
mul.rn.bf16x2 a, q, $2;
shr.u32 t, $1, 4;
lop3.b32 q, t, 983055, 1124090624, 234;
sub.rn.bf16x2 q, q, $6;
fma.rn.bf16x2 a, q, $3, a;
shr.u32 t, $1, 8;
lop3.b32 q, t, 983055, 1124090624, 234;
sub.rn.bf16x2 q, q, $6;
fma.rn.bf16x2 a, q, $4, a;
shr.u32 t, $1, 12;
lop3.b32 q, t, 983055, 1124090624, 234;
sub.rn.bf16x2 q, q, $6;
fma.rn.bf16x2 a, q, $5, a;
shl.b32 lo, a, 16;
and.b32 hi, a, -65536;
add.f32 $0, lo, hi;
}"""


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    global fold  # a module global, not a closure's: Triton's interpreter resolves a kernel's helpers there
    from qbench.runtimes.kernels import fold

    word_asm = tl.constexpr(BF16X2_WORD)
    helpers = overlap.jit()
    prefetch_l2, after_previous = helpers.prefetch_l2, helpers.after_previous
    line_words = tl.constexpr(overlap.LINE // 4)  # int32 words in an L2 line

    @triton.jit
    def qbench_int4_gemv_kernel(
        X, QW, S, Z, B, Y, ACC, COUNT, N, K, KW, GROUPS_TOTAL, GROUPS_PER_SPLIT, SPLIT, SN, SG, AHEAD,
        H, R, G, eps, NPARTS,
        GROUP: tl.constexpr, GROUPS: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
        BLOCK_N: tl.constexpr, BF16X2: tl.constexpr = False, PDL: tl.constexpr = False,
        RMS: tl.constexpr = False, SILU: tl.constexpr = False, RESIDUAL: tl.constexpr = False,
        SCALE_OUT: tl.constexpr = False, TILE: tl.constexpr = 0, STAGES: tl.constexpr = 1,
        PARTS: tl.constexpr = 0, SQUARES: tl.constexpr = False,
    ):
        WORDS: tl.constexpr = GROUP // 8  # int32 words of one row in one group
        TWO_23: tl.constexpr = 8388608.0  # MAGIC, as a constant the compiler may use
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        wanted = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = wanted < N
        rows = tl.where(row_ok, wanted, 0)  # out-of-range rows re-read row 0 and are not stored
        words = tl.arange(0, WORDS)
        first = pid_k * GROUPS_PER_SPLIT
        last = tl.minimum(first + GROUPS_PER_SPLIT, GROUPS_TOTAL)
        acc = tl.zeros((BLOCK_N, WORDS), dtype=tl.float32)  # summed over its words once, at the end
        # RMS: h's sum of squares over this program's groups (`squared`), loaded in the loop beside x: the
        # row block's programs together cover h once and the last to arrive adds their sums, so no
        # program reads all of h after its loop, on the critical path
        span = tl.arange(0, GROUP)
        # KW (= K / 8) is its own argument so that Triton sees it divisible by 16 and proves each
        # row's words 16-byte aligned: the weight loads become 128-bit loads
        w_rows = QW + rows[:, None].to(tl.int64) * KW  # [BLOCK_N, 1]
        if PDL:  # the first AHEAD groups' weight lines, scales and zeros (constant), then wait for x's kernel
            LINES: tl.constexpr = (GROUPS * WORDS + line_words - 1) // line_words
            for g0 in range(first, tl.minimum(first + AHEAD, last), GROUPS):
                lines = tl.minimum(g0 * WORDS + tl.arange(0, LINES) * line_words, KW - 1)
                prefetch_l2(w_rows + lines[None, :])
                prefetch_l2(S + rows * SN + g0 * SG)
                prefetch_l2(Z + rows * SN + g0 * SG)
            after_previous()
        # the bias, residual and next norm's weight of the rows, loaded now: the last program to arrive
        # uses them after the atomics, where a load's latency would add to the critical path
        bias, residual, weight_next = fold.inputs(B, R, G, rows, HAS_BIAS, RESIDUAL, SCALE_OUT)
        if RMS and PARTS > 0:  # h's sum of squares from the GEMV that wrote h: its NPARTS float32 sums, summed here
            parts = tl.arange(0, PARTS)
            sums = tl.load(H.to(tl.pointer_type(tl.float32), bitcast=True) + parts, mask=parts < NPARTS, other=0.0)
            summed = tl.sum(sums, axis=0)
        if TILE == 0:  # GROUPS loads of [BLOCK_N, WORDS] an iteration
            squares = tl.zeros((GROUP,), dtype=tl.float32)
            for g0 in range(first, last, GROUPS):
                for j in tl.static_range(GROUPS):
                    # the last iteration of a split whose group count is not a multiple of GROUPS re-reads
                    # its last group (unmasked loads) and adds it times a zero scale
                    g = tl.minimum(g0 + j, last - 1)
                    w = tl.load(w_rows + g * WORDS + words[None, :], eviction_policy="evict_first")  # [BLOCK_N, WORDS]
                    # scales and zeros at (row, g): strides SN, SG (group-major: SN = 1, specialised by Triton)
                    s = tl.load(S + rows * SN + g * SG).to(tl.float32)
                    s = tl.where(g0 + j < last, s, 0.0)
                    if RMS and PARTS == 0:
                        h = tl.load(H + g * GROUP + span).to(tl.float32)
                        squares += tl.where(g0 + j < last, h * h, 0.0)
                    if BF16X2:  # Hopper: the word's eight weights in bf16 pairs, inline PTX (BF16X2_WORD)
                        zero = tl.load(Z + rows * SN + g * SG).to(tl.int32)
                        zz = ((zero | 0x4300) * 0x10001)[:, None]  # bf16 pair (128 + zero, 128 + zero)
                        # the activation pairs of nibbles (j, j + 4): x's 32-bit words j * WORDS + w of the group
                        x32 = X.to(tl.pointer_type(tl.int32), bitcast=True) + g * (GROUP // 2) + words
                        args = [
                            w, tl.load(x32)[None, :], tl.load(x32 + WORDS)[None, :], tl.load(x32 + 2 * WORDS)[None, :],
                            tl.load(x32 + 3 * WORDS)[None, :], zz,
                        ]
                        part = tl.inline_asm_elementwise(
                            asm=word_asm, constraints="=r,r,r,r,r,r,r", args=args, dtype=tl.int32, is_pure=True, pack=1,
                        ).to(tl.float32, bitcast=True)  # [BLOCK_N, WORDS]: each word's sum over its eight weights
                    else:
                        z = tl.load(Z + rows * SN + g * SG).to(tl.float32)
                        offset = (TWO_23 + z)[:, None]  # [BLOCK_N, 1]: 2^23 + zero
                        part = tl.zeros((BLOCK_N, WORDS), dtype=tl.float32)
                        # nibble i of every word at once, in w's own 2D layout (no reshapes, no layout
                        # conversions); the layout puts input 2 (j * WORDS + w) + h of the group in nibble
                        # j + 4h of word w, so nibble i's inputs are every other input of one run of x
                        for i in tl.static_range(8):
                            x = tl.load(X + g * GROUP + 2 * ((i % 4) * WORDS + words) + i // 4).to(tl.float32)
                            q = (((w >> (4 * i)) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True)  # 2^23 + q, exactly
                            part += (q - offset) * x[None, :]  # (q - zero) exactly, times x
                    acc += part * s[:, None]  # the group's scale: once a word, not once an element
            acc = tl.sum(acc, axis=1)  # [BLOCK_N]
            squared = tl.sum(squares, axis=0)
        else:  # TILE 1: one [BLOCK_N, GROUPS, WORDS] load an iteration; 2: and the next one's before this one's sums
            # (STAGES > 1, tile 1 only: Triton's software pipelining issues the loads STAGES - 1 iterations ahead;
            # STAGES 1: no num_stages on the loop, the loop as it was measured before stages existed)
            spans = tl.arange(0, GROUPS)
            tiles = tl.zeros((BLOCK_N, GROUPS, WORDS), dtype=tl.float32)
            squares = tl.zeros((GROUPS, GROUP), dtype=tl.float32)
            w_tile = QW + rows[:, None, None].to(tl.int64) * KW + words[None, None, :]  # [BLOCK_N, 1, WORDS]
            sz = rows[:, None] * SN  # [BLOCK_N, 1]: scales' and zeros' rows
            if TILE == 2:
                g = tl.minimum(first + spans, last - 1)
                w = tl.load(w_tile + g[None, :, None] * WORDS, eviction_policy="evict_first")
                s = tl.load(S + sz + g[None, :] * SG)
                z = tl.load(Z + sz + g[None, :] * SG)
            for g0 in tl.range(first, last, GROUPS, num_stages=STAGES if STAGES > 1 else None):
                g = tl.minimum(g0 + spans, last - 1)  # [GROUPS]; past the split's end: its last group, scale 0
                if TILE == 2:
                    after = tl.minimum(g0 + GROUPS + spans, last - 1)
                    w_next = tl.load(w_tile + after[None, :, None] * WORDS, eviction_policy="evict_first")
                    s_next = tl.load(S + sz + after[None, :] * SG)
                    z_next = tl.load(Z + sz + after[None, :] * SG)
                else:
                    w = tl.load(w_tile + g[None, :, None] * WORDS, eviction_policy="evict_first")
                    s = tl.load(S + sz + g[None, :] * SG)
                    z = tl.load(Z + sz + g[None, :] * SG)
                scale = tl.where((g0 + spans < last)[None, :], s.to(tl.float32), 0.0)  # [BLOCK_N, GROUPS]
                if RMS and PARTS == 0:
                    h = tl.load(H + g[:, None] * GROUP + span[None, :]).to(tl.float32)  # [GROUPS, GROUP]
                    squares += tl.where((g0 + spans < last)[:, None], h * h, 0.0)
                if BF16X2:
                    zz = ((z.to(tl.int32) | 0x4300) * 0x10001)[:, :, None]
                    x32 = X.to(tl.pointer_type(tl.int32), bitcast=True) + g[:, None] * (GROUP // 2) + words[None, :]
                    args = [
                        w, tl.load(x32)[None, :, :], tl.load(x32 + WORDS)[None, :, :],
                        tl.load(x32 + 2 * WORDS)[None, :, :], tl.load(x32 + 3 * WORDS)[None, :, :], zz,
                    ]
                    part = tl.inline_asm_elementwise(
                        asm=word_asm, constraints="=r,r,r,r,r,r,r", args=args, dtype=tl.int32, is_pure=True, pack=1,
                    ).to(tl.float32, bitcast=True)  # [BLOCK_N, GROUPS, WORDS]
                else:
                    offset = (TWO_23 + z.to(tl.float32))[:, :, None]
                    part = tl.zeros((BLOCK_N, GROUPS, WORDS), dtype=tl.float32)
                    for i in tl.static_range(8):
                        x = tl.load(X + g[:, None] * GROUP + 2 * ((i % 4) * WORDS + words[None, :]) + i // 4)
                        q = (((w >> (4 * i)) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True)
                        part += (q - offset) * x.to(tl.float32)[None, :, :]
                tiles += part * scale[:, :, None]
                if TILE == 2:
                    w = w_next
                    s = s_next
                    z = z_next
            acc = tl.sum(tl.sum(tiles, axis=2), axis=1)  # [BLOCK_N]
            squared = tl.sum(tl.sum(squares, axis=1), axis=0)
        if SPLIT_K:  # each program adds its partial sums; the last of a row block to arrive finishes y
            tl.atomic_add(ACC + rows, acc, mask=row_ok, sem="relaxed")
            if RMS and PARTS == 0:  # this program's share of h's sum of squares, in the slot after the sums (ACC + N)
                tl.atomic_add(ACC + N + pid_n, squared, sem="relaxed")
            tl.debug_barrier()  # every thread's adds issued before the counter says this program is done
            last = tl.atomic_add(COUNT + pid_n, 1, sem="acq_rel") == SPLIT - 1
        else:  # one program a row block: it finishes y
            last = True
        if last:
            if SPLIT_K:  # the sums are complete: take them (exchanged as int32 words, zeroing the workspace)
                bits = ACC.to(tl.pointer_type(tl.int32), bitcast=True) + rows
                acc = tl.atomic_xchg(bits, tl.zeros((BLOCK_N,), dtype=tl.int32), mask=row_ok)
                acc = acc.to(tl.float32, bitcast=True)
            if RMS:  # x is h times the norm's weight (`gemv.gemv`'s fold); h's RMS scale, once a row block
                if PARTS > 0:
                    total = summed
                elif SPLIT_K:  # every program's share, taken (and the slot zeroed) as the sums are
                    total = tl.atomic_xchg(ACC.to(tl.pointer_type(tl.int32), bitcast=True) + N + pid_n, 0)
                    total = total.to(tl.float32, bitcast=True)
                else:
                    total = squared
                acc = acc * tl.rsqrt(total / K + eps)
            if HAS_BIAS:
                acc += bias
            stored = fold.store(acc, Y, residual, weight_next, rows, row_ok, pid_n, N, BLOCK_N, SILU, RESIDUAL,
                                SCALE_OUT)
            if SQUARES:  # the sum of squares of the h this row block stored, a float32 after y and y times g
                stored = stored.to(Y.dtype.element_ty).to(tl.float32)
                tail = (Y + 2 * N).to(tl.pointer_type(tl.float32), bitcast=True)  # after y and y times g
                tl.store(tail + pid_n, tl.sum(tl.where(row_ok, stored * stored, 0.0), axis=0))
            if SPLIT_K:
                tl.atomic_xchg(COUNT + pid_n, 0)

    return qbench_int4_gemv_kernel


@functools.lru_cache(maxsize=1)
def _dequantize_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def qbench_int4_dequantize_kernel(QW, S, Z, OUT, N, KW, SN, SG, GROUP: tl.constexpr, BLOCK_N: tl.constexpr):
        """OUT [N, K] = (q - zero) * scale for BLOCK_N rows and one group: the same float32 arithmetic as
        `dequantize`, rounded once to OUT's dtype (a prefill's weight, one launch for the layer).
        Nibbles j and j + 4 of word w are inputs 2 (j * WORDS + w) and the one after it, so the pair
        joined along a last axis of 2 is one contiguous run of 2 * WORDS inputs: each store is whole
        (128 bits a thread compiled for sm_90), where a store a nibble wrote every other input (16 bits)."""
        WORDS: tl.constexpr = GROUP // 8
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        g = tl.program_id(1)
        ok = rows < N
        words = tl.arange(0, WORDS)
        w = tl.load(QW + rows[:, None].to(tl.int64) * KW + g * WORDS + words[None, :], mask=ok[:, None], other=0)
        s = tl.load(S + rows * SN + g * SG, mask=ok, other=0.0).to(tl.float32)[:, None]
        z = tl.load(Z + rows * SN + g * SG, mask=ok, other=0).to(tl.int32)[:, None]
        out = OUT + rows[:, None].to(tl.int64) * (KW * 8) + g * GROUP + tl.arange(0, 2 * WORDS)[None, :]
        for j in tl.static_range(4):  # nibbles j and j + 4 (bits 4j and 16 + 4j) of the group's words
            low = (((w >> (4 * j)) & 0xF) - z).to(tl.float32) * s
            high = (((w >> (16 + 4 * j)) & 0xF) - z).to(tl.float32) * s
            pairs = tl.reshape(tl.join(low, high), (BLOCK_N, 2 * WORDS))  # inputs 2 (j * WORDS + w) + h
            tl.store(out + 2 * j * WORDS, pairs.to(OUT.dtype.element_ty, fp_downcast_rounding="rtne"),
                     mask=ok[:, None])

    return qbench_int4_dequantize_kernel


def dequantize_triton(qweight, scales, zeros, group_size: int, dtype: torch.dtype) -> torch.Tensor:
    """`dequantize(...).to(dtype)`, element for element, in one Triton launch (a CUDA prefill's weight).
    With the torch path's twenty-odd ops over int32 and float32 temporaries, qbench-int4's time to
    first token on the H100 was six times bf16's at ctx 2048, the same prefill but for the
    dequantisation (results/h100/int4/README.md). Its stores are whole runs of the output row (the
    kernel's docstring): after the layout paired adjacent inputs (4d445d8) a store a nibble wrote
    every other bf16, and qbench-int4's time to first token on the H100 more than doubled after it
    (results/h100/step4, step5)."""
    rows, kw = qweight.shape
    if not qweight.is_contiguous() or not one_layout(scales, zeros):
        raise ValueError("dequantize_triton needs a contiguous qweight and scales and zeros of one layout")
    out = torch.empty(rows, kw * 8, dtype=dtype, device=qweight.device)
    block_n = 32
    _dequantize_kernel()[(-(-rows // block_n), kw * 8 // group_size)](
        qweight, scales, zeros, out, rows, kw, scales.stride(0), scales.stride(1), GROUP=group_size, BLOCK_N=block_n,
    )
    return out


# The kernel's arguments as Triton's compiler takes them, the pointers and sizes a launch on Qwen2.5-7B's
# shapes sees as 16-aligned (what makes the weight loads 128-bit)
SIGNATURE = {
    "X": "*bf16", "QW": "*i32", "S": "*fp16", "Z": "*u8", "B": "*bf16", "Y": "*bf16", "ACC": "*fp32",
    "COUNT": "*i32", "N": "i32", "K": "i32", "KW": "i32", "GROUPS_TOTAL": "i32", "GROUPS_PER_SPLIT": "i32",
    "SPLIT": "i32", "SN": "i32", "SG": "i32", "AHEAD": "i32", "H": "*bf16", "R": "*bf16", "G": "*bf16", "eps": "fp32",
    "NPARTS": "i32", "GROUP": "constexpr", "GROUPS": "constexpr", "HAS_BIAS": "constexpr", "SPLIT_K": "constexpr",
    "BLOCK_N": "constexpr", "BF16X2": "constexpr", "PDL": "constexpr", "RMS": "constexpr", "SILU": "constexpr",
    "RESIDUAL": "constexpr", "SCALE_OUT": "constexpr", "TILE": "constexpr", "STAGES": "constexpr",
    "PARTS": "constexpr", "SQUARES": "constexpr",
}
# the fold's constexprs, unused
FOLD_OFF = {"RMS": False, "SILU": False, "RESIDUAL": False, "SCALE_OUT": False, "PARTS": 0, "SQUARES": False}
ALIGNED = ("X", "QW", "S", "Z", "B", "Y", "ACC", "COUNT", "N", "K", "KW", "SG")


def compile_for_sm90(constants: dict, warps: int):
    """The kernel compiled for an H100 (sm_90) on any machine, no GPU needed: `constants` gives every
    constexpr of SIGNATURE but the fold's (off unless given: FOLD_OFF), TILE (0) and STAGES (1), and
    may fix an argument, as a launch with SN = 1 does. Where this Triton has no ptxas, triton.compile
    raises a RuntimeError naming it after its front end ran (`kernels.compile_for_h100`). For the tests
    and tools/int4_sass.py; qbench's launches compile as usual."""
    from qbench.runtimes.kernels import compile_for_h100

    return compile_for_h100(_kernel(), SIGNATURE, FOLD_OFF | {"TILE": 0, "STAGES": 1} | constants, ALIGNED, warps)


# (N, K) -> (BLOCK_N, GROUPS, SPLIT, warps), for group size 128: the fastest configuration of
# tools/device/int4_shapes.py's sweeps on Qwen2.5-7B's decoder shapes as lean fuses them (an H100,
# results/h100/int4/), written by tools/device/apply_table.py; hf's unfused q_proj shares o's shape.
# Other shapes, and group size 64, take the rule below.
TABLE: dict[tuple[int, int], tuple[int, ...]] = {  # a fifth element True: bf16x2; a sixth: the tile; a seventh: stages
    (4608, 3584): (32, 2, 8, 4, True, 1),  # q/k/v fused
    (3584, 3584): (32, 2, 8, 4, True, 2),  # o (and q unfused)
    (37888, 3584): (32, 4, 1, 4, True, 1),  # gate/up fused
    (3584, 18944): (32, 2, 8, 4, True, 2),  # down
}


def hopper(device: torch.device) -> bool:
    """Whether the bf16x2 variant's PTX (sub/mul.bf16x2: sm_90) runs on this device."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)


def choose_blocks(n: int, k: int, sms: int, group_size: int = 128, bf16x2_ok: bool = False) -> tuple[int, ...]:
    """(BLOCK_N, GROUPS, SPLIT, warps[, bf16x2[, tile[, stages]]]): the table's entry for (N, K) at group
    size 128 (whole only where `bf16x2_ok`: a Hopper GPU and bf16 activations; elsewhere its first four,
    tile 0 and stages 1, the combination the sweep did not time), else 256
    inputs an iteration, 32 rows a program (16, then 8, where that is too few), and the smallest
    split that gives every SM at least 4 programs. Warps follow the tile: a [BLOCK_N, g/8] tile of
    words fills 32 * warps threads with four words (one 128-bit load) each; more threads would hold
    copies of the same words (Triton replicates a tile smaller than its threads)."""
    if group_size == 128 and (n, k) in TABLE:
        entry = TABLE[(n, k)]
        return entry if bf16x2_ok else entry[:4]
    groups = max(1, 256 // group_size)
    total_groups = k // group_size
    target = 4 * sms
    most = max(1, total_groups // groups)  # every split at least one iteration
    for block_n in (32, 16, 8):
        row_blocks = -(-n // block_n)
        split = min(-(-target // row_blocks), most)
        if row_blocks * split >= target:
            break
    warps = max(1, min(4, block_n * (group_size // 8) // 128))
    return block_n, groups, split, warps


_workspaces: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _workspace(device: torch.device, n: int, block_n: int, split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The split-K sums (float32 [N], then the RMS fold's sums of squares, one a row block) and arrival
    counters (int32 [row blocks]), zero between calls."""
    key = (device, n, block_n, split)
    if key not in _workspaces:
        _workspaces[key] = (
            torch.zeros(n + -(-n // block_n), dtype=torch.float32, device=device),
            torch.zeros(-(-n // block_n), dtype=torch.int32, device=device),
        )
    return _workspaces[key]


def launch(
    x, qweight, scales, zeros, bias, group_size, blocks, pdl: bool = False, rms=None, eps: float = 0.0,
    residual=None, scale_out=None, silu: bool = False, squares: bool = False, rms_parts: bool = False,
) -> torch.Tensor:
    """`blocks`: (BLOCK_N, GROUPS, SPLIT, warps[, bf16x2[, tile[, stages]]]); bf16x2 (the inline-PTX word,
    sm_90 and bf16 activations only) is off unless named; tile (the loop's loads, the module docstring's
    "Tiles") is 0 unless named; stages (tile 1's pipelined loads: "Stages") 1 unless named. `pdl`: a
    programmatic dependent launch (`overlap.py`).
    `rms`, `eps`, `residual`, `scale_out`, `silu`: lean's fold, as `gemv.gemv` takes them. With
    `rms_parts`, `rms` is not h but float32 sums of squares of h's parts (what a call with `squares`
    stored), summed instead of h being read. `squares` (with `scale_out`): y is followed by one float32
    a row block, the sum of squares of the h it stored there (`out_size`)."""
    n, kw = qweight.shape
    k = kw * 8
    block_n, groups, split, warps, *variant = blocks
    bf16x2 = bool(variant and variant[0])
    tile = int(variant[1]) if len(variant) > 1 else 0
    stages = int(variant[2]) if len(variant) > 2 else 1
    if tile not in (0, 1, 2):
        raise ValueError(f"gemv_int4's tile is 0, 1 or 2, got {tile}")
    if stages < 1 or (stages > 1 and tile != 1):
        raise ValueError(f"gemv_int4's stages are 1, or more with tile 1 (its loop is pipelined), got {stages} "
                         f"with tile {tile}")
    if bf16x2 and x.dtype != torch.bfloat16:
        raise ValueError(f"gemv_int4's bf16x2 variant multiplies bf16 activations, got {x.dtype}")
    if bf16x2 and x.data_ptr() % 4:  # the variant reads x as 32-bit words (bf16 pairs): a fresh copy is aligned
        x = x.clone()
    if silu:
        block_n = max(block_n, 2)  # a program's rows are whole (gate, up) pairs
    total = k // group_size
    per_split = -(-total // split)
    per_split = -(-per_split // groups) * groups  # whole iterations a split
    split = -(-total // per_split)  # no split left without groups
    y = torch.empty(out_size(n, block_n, scale_out, silu, squares, x.dtype), dtype=x.dtype, device=x.device)
    acc, count = _workspace(x.device, n, block_n, split) if split > 1 else (y, y)
    # with pdl: the groups a program asks L2 for before its wait (its whole range, or one iteration's)
    ahead = (per_split if overlap.whole(qweight.numel() * 4, x.device) else groups) if pdl else 0
    _kernel()[(-(-n // block_n), split)](
        x, qweight, scales, zeros, bias if bias is not None else scales, y, acc, count, n, k, kw, total,
        per_split, split, scales.stride(0), scales.stride(1), ahead,
        rms if rms is not None else x, residual if residual is not None else x,
        scale_out if scale_out is not None else x, eps, rms.numel() if rms_parts else 0,
        GROUP=group_size, GROUPS=groups,
        HAS_BIAS=bias is not None, SPLIT_K=split > 1, BLOCK_N=block_n, BF16X2=bf16x2, PDL=pdl,
        RMS=rms is not None, SILU=silu, RESIDUAL=residual is not None, SCALE_OUT=scale_out is not None,
        TILE=tile, STAGES=stages, PARTS=next_power_of_2(rms.numel()) if rms_parts else 0, SQUARES=squares,
        num_warps=warps, **overlap.launch_options(pdl),
    )
    return y


def out_size(n: int, block_n: int, scale_out, silu: bool, squares: bool, dtype: torch.dtype) -> int:
    """The call's output elements (of x's dtype, 16 or 32 bits): `gemv.out_size`'s, then with `squares`
    one float32 a row block of BLOCK_N rows (two 16-bit elements)."""
    return gemv.out_size(n, scale_out, silu) + (-(-n // block_n) * 4 // dtype.itemsize if squares else 0)


def check_parts(rms, scale_out, silu: bool, squares: bool, rms_parts: bool) -> None:
    """`squares` needs `scale_out` (the h it sums is the residual stream); `rms_parts`, float32 sums."""
    if squares and (scale_out is None or silu):
        raise ValueError("gemv_int4's squares are of the h a scale_out call stores: they need scale_out, not silu")
    if rms_parts and (rms is None or rms.dtype != torch.float32 or rms.dim() != 1 or not rms.numel()):
        raise ValueError("gemv_int4's rms_parts takes rms as float32 sums of squares [parts], got "
                         + ("none" if rms is None else f"{rms.dtype} {tuple(rms.shape)}"))


def one_layout(scales: torch.Tensor, zeros: torch.Tensor) -> bool:
    """Scales and zeros of one layout, row- or group-major (both kernels take their strides)."""
    return scales.stride() == zeros.stride() and 1 in scales.stride()


def _check(x, qweight, scales, zeros, group_size) -> None:
    n, kw = qweight.shape
    k = kw * 8
    if group_size % 8 or group_size & (group_size - 1) or k % group_size:
        raise ValueError(f"gemv_int4 needs a power-of-two group size (>= 8) dividing K = {k}, got {group_size}")
    if x.numel() != k or not qweight.is_contiguous() or qweight.dtype != torch.int32:
        raise ValueError(f"gemv_int4 needs x of {k} elements and a contiguous int32 qweight [N, K/8]")
    if scales.shape != (n, k // group_size) or zeros.shape != scales.shape:
        raise ValueError(f"gemv_int4 needs scales and zeros of [{n}, {k // group_size}]")
    if not one_layout(scales, zeros):
        raise ValueError(f"gemv_int4 needs scales and zeros of one layout, row- or group-major, "
                         f"got strides {scales.stride()} and {zeros.stride()}")


@torch.library.custom_op("qbench::gemv_int4", mutates_args=())
def gemv_int4(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bias: torch.Tensor | None,
    group_size: int, block_n: int, groups: int, split: int, warps: int, bf16x2: bool = False, tile: int = 0,
    stages: int = 1, pdl: bool = False, rms: torch.Tensor | None = None, eps: float = 0.0,
    residual: torch.Tensor | None = None, scale_out: torch.Tensor | None = None, silu: bool = False,
    squares: bool = False, rms_parts: bool = False,
) -> torch.Tensor:
    """x [K], qweight int32 [N, K/8], scales fp16 [N, K/g], zeros uint8 [N, K/g], bias [N] or None;
    returns [N] in x's dtype. `pdl`: a programmatic dependent launch (lean's QBENCH_LEAN_PDL=on).
    `rms`, `eps`, `residual`, `scale_out`, `silu`: lean's QBENCH_LEAN_FOLD=on, as `gemv.gemv` takes
    them (the same arithmetic, the same output sizes), and two of its own (`launch`): `squares`, which
    appends h's sums of squares to y, and `rms_parts`, which takes them as `rms`."""
    _check(x, qweight, scales, zeros, group_size)
    gemv.check_fold(qweight.shape[0], qweight.shape[1] * 8, x, None if rms_parts else rms, residual, scale_out, silu)
    check_parts(rms, scale_out, silu, squares, rms_parts)
    flat = (None if t is None else t.contiguous().view(-1) for t in (rms, residual, scale_out))
    return launch(x.contiguous().view(-1), qweight, scales, zeros, bias, group_size,
                  (block_n, groups, split, warps, bf16x2, tile, stages), pdl, next(flat), eps, next(flat), next(flat),
                  silu, squares, rms_parts)


@gemv_int4.register_fake
def _(x, qweight, scales, zeros, bias, group_size, block_n, groups, split, warps, bf16x2=False, tile=0, stages=1,
      pdl=False, rms=None, eps=0.0, residual=None, scale_out=None, silu=False, squares=False,
      rms_parts=False):
    return x.new_empty(out_size(qweight.shape[0], block_n, scale_out, silu, squares, x.dtype))


# ---- the layout, in plain torch: packing, the repacking of published formats, the reference -------


def group_major(t: torch.Tensor) -> torch.Tensor:
    """[N, G] scales or zeros with strides (1, N): the same values, each group's rows side by side."""
    return t.t().contiguous().t()


def pack(q: torch.Tensor, group_size: int) -> torch.Tensor:
    """4-bit values [N, K] (0..15) -> int32 [N, K/8]: in each group of `group_size` inputs (W =
    group_size / 8 words), the input pair (2p, 2p + 1), p = j * W + w (j = 0..3), sits in nibbles j
    and j + 4 of the group's word w: the pair the bf16x2 word dequantises together meets one 32-bit
    word of x, and nibble j (or j + 4) of a group's words meets every other input of one contiguous
    run of x."""
    rows, cols = q.shape
    words = group_size // 8
    values = q.to(torch.int32).reshape(rows, cols // group_size, 4, words, 2)  # [.., j, word, pair half]
    packed = torch.zeros(rows, cols // group_size, words, dtype=torch.int32, device=q.device)
    for j in range(4):
        for half in range(2):
            packed |= values[:, :, j, :, half] << (4 * (j + 4 * half))
    return packed.reshape(rows, cols // 8)


def unpack(qweight: torch.Tensor, group_size: int) -> torch.Tensor:
    """int32 [N, K/8] -> int32 [N, K] in 0..15 (pack's inverse)."""
    rows, kw = qweight.shape
    words = group_size // 8
    grouped = qweight.reshape(rows, kw // words, words)
    out = torch.empty(rows, kw // words, 4, words, 2, dtype=torch.int32, device=qweight.device)
    for j in range(4):
        for half in range(2):
            out[:, :, j, :, half] = (grouped >> (4 * (j + 4 * half))) & 0xF
    return out.reshape(rows, kw * 8)


def dequantize(qweight, scales, zeros, group_size: int) -> torch.Tensor:
    """The float32 weight [N, K] the kernel multiplies by: (q - zero) * scale."""
    zero = zeros.to(torch.int32).repeat_interleave(group_size, dim=1)
    return (unpack(qweight, group_size) - zero).float() * scales.float().repeat_interleave(group_size, dim=1)


SLICE_ELEMENTS = 1 << 22  # weights a slice of `dequantize_as` unpacks at once (16 MiB of each float32 temporary)


def dequantize_as(qweight, scales, zeros, group_size: int, dtype: torch.dtype) -> torch.Tensor:
    """`dequantize(...).to(dtype)`, element for element, a slice of rows at a time: the float32 and
    int32 temporaries of the whole weight (four times its 16-bit size each: over 1 GB for Qwen2.5-7B's
    fused gate/up) never exist at once, so a prefill leaves no such blocks in the allocator's cache."""
    rows, kw = qweight.shape
    out = torch.empty(rows, kw * 8, dtype=dtype, device=qweight.device)
    step = max(1, SLICE_ELEMENTS // (kw * 8))
    for first in range(0, rows, step):
        part = slice(first, first + step)
        out[part] = dequantize(qweight[part], scales[part], zeros[part], group_size).to(dtype)
    return out


def _unpack_rows(packed: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """int32 [R, C/8] with nibble i holding column order[i] of eight -> int32 [R, C]."""
    rows, cols = packed.shape
    values = torch.empty(rows, cols, 8, dtype=torch.int32, device=packed.device)
    for nibble, column in enumerate(order):
        values[:, :, column] = (packed >> (4 * nibble)) & 0xF
    return values.reshape(rows, cols * 8)


AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # as backends/formats.py: nibble i of an AWQ word holds column AWQ_ORDER[i]


def from_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor) -> dict[str, torch.Tensor]:
    """AWQ (GEMM) tensors: qweight int32 [K, N/8], qzeros int32 [K/g, N/8] (eight outputs a word in
    the order 0,2,4,6,1,3,5,7), scales fp16 [K/g, N] -> this layout's qweight, scales, zeros (the
    last two group-major, as the checkpoint's own)."""
    q = _unpack_rows(qweight, AWQ_ORDER)  # [K, N]
    z = _unpack_rows(qzeros, AWQ_ORDER)  # [K/g, N]
    return {
        "qweight": pack(q.t().contiguous(), q.shape[0] // scales.shape[0]),
        "scales": group_major(scales.t().to(torch.float16)),
        "zeros": group_major(z.t().to(torch.uint8)),
    }


def from_gptq(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor | None, group_size: int
) -> dict[str, torch.Tensor]:
    """GPTQ v1 tensors (as gptqmodel/exllamav2 and backends/formats.py store them): qweight int32
    [K/8, N] (eight inputs a word, in order), qzeros int32 [K/g, N/8] holding zero - 1 (eight
    outputs a word, in order), scales fp16 [K/g, N], g_idx [K] -> this layout. Act-order (a g_idx
    that is not k // g) is refused: this layout needs each group's inputs side by side."""
    in_features = qweight.shape[0] * 8
    if g_idx is not None:
        plain = torch.arange(in_features, device=g_idx.device) // group_size
        if not torch.equal(g_idx.long(), plain):
            raise ValueError("GPTQ act-order (g_idx not k // group size) cannot be repacked into qbench-int4's layout")
    q = _unpack_rows(qweight.t().contiguous(), tuple(range(8)))  # [N, K]: input k of row n
    z = _unpack_rows(qzeros, tuple(range(8))) + 1  # [K/g, N]: v1 stores zero - 1 (so 15 reads 16)
    return {
        "qweight": pack(q, group_size),
        "scales": group_major(scales.t().to(torch.float16)),
        "zeros": group_major(z.t().to(torch.uint8)),
    }


def bytes_read(in_features: int, out_features: int, group_size: int) -> int:
    """What the kernel reads for one weight: packed 4-bit values, an fp16 scale and a uint8 zero a group."""
    groups = in_features // group_size
    return in_features * out_features // 2 + groups * out_features * (2 + 1)
