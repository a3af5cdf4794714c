"""qbench's own 4-bit GEMV (qbench/runtimes/kernels/gemv_int4.py) and the qbench-int4 backend: the kernel run
by Triton's interpreter on the CPU in a child process (as test_gemv.py) against F.linear of the
dequantised weight; the AWQ and GPTQ repacking bit-exact against backends/formats.py's dequantisers;
the byte formula against the stored tensors; lean with the backend's fused launches against hf."""

import ast
import itertools
from pathlib import Path
from textwrap import dedent

import pytest
import torch
from conftest import INT4_TINY_LEAN, int4_ptx, ptx_for_sm90, run_interpreted

from qbench import formats
from qbench.runtimes.kernels import gemv_int4

triton = pytest.importorskip("triton", reason="Triton not installed (the test extra installs it on Linux x86-64)")


def test_gemv_int4_matches_f_linear_of_the_dequantised_weight_on_ragged_shapes():
    out = run_interpreted(
        """
        import torch
        from qbench.runtimes.kernels import gemv_int4 as G
        torch.manual_seed(0)
        # (N, K, group, (BLOCK_N, GROUPS, SPLIT, warps), bias): N not a multiple of BLOCK_N, odd group
        # counts, K not a multiple of BLOCK_K (GROUPS groups), split-K off and on (also a split that
        # does not divide the groups), and the rule's own choice
        cases = [(40, 640, 128, (16, 1, 1, 4), False), (40, 640, 128, (16, 2, 1, 4), True),
                 (40, 640, 128, (16, 2, 2, 4), True), (24, 320, 64, (16, 2, 3, 4), False),
                 (8, 448, 64, (8, 1, 7, 2), True), (72, 1152, 128, G.choose_blocks(72, 1152, 8), True),
                 # the tiled loops (a sixth element: one [BLOCK_N, GROUPS, WORDS] load an iteration; 2:
                 # the next iteration's loaded ahead, past a split's end clamped to its last group)
                 (40, 640, 128, (16, 2, 2, 4, False, 1), True), (24, 320, 64, (16, 2, 3, 4, False, 2), False),
                 (40, 640, 128, (16, 4, 1, 4, False, 2), True), (8, 448, 64, (8, 1, 7, 2, False, 2), False),
                 # tile 1 pipelined (a seventh element: the interpreter ignores num_stages, the loop runs)
                 (40, 640, 128, (16, 2, 2, 4, False, 1, 3), True), (24, 320, 64, (16, 2, 3, 4, False, 1, 4), False),
                 # a few rows a program, unsplit or in two (tools/device/int4_shapes.py's SMALL=1)
                 (40, 640, 128, (4, 4, 1, 1, False, 2), True), (24, 1024, 128, (2, 8, 2, 1, False, 1), False)]
        for dtype, some in ((torch.bfloat16, cases), (torch.float16, cases[2:4] + cases[7:8])):
            for n, k, g, blocks, with_bias in some:
                q = torch.randint(0, 16, (n, k))
                scales = (torch.rand(n, k // g) * 0.02 + 0.001).half()
                zeros = torch.randint(0, 17, (n, k // g)).to(torch.uint8)
                qweight = G.pack(q, g)
                x = torch.randn(k).to(dtype)
                b = torch.randn(n).to(dtype) if with_bias else None
                want = torch.nn.functional.linear(
                    x.float(), G.dequantize(qweight, scales, zeros, g), None if b is None else b.float())
                # the split-K workspace is left zeroed for the next call; scales and zeros row-major,
                # then group-major (qbench-int4's own layout: the kernel takes their strides)
                for call, layout in enumerate((lambda t: t, G.group_major)):
                    got = G.gemv_int4(x, qweight, layout(scales), layout(zeros), b, g, *blocks)
                    assert got.dtype == dtype and got.shape == (n,)
                    err = ((got.float() - want).abs().max() / want.abs().max()).item()
                    assert err < 1e-2, (dtype, n, k, g, blocks, call, err)
                if n > blocks[0]:  # scales of one layout and zeros of the other are refused
                    try:
                        G.gemv_int4(x, qweight, G.group_major(scales), zeros, b, g, *blocks)
                        raise AssertionError("mixed layouts accepted")
                    except ValueError as error:
                        assert "one layout" in str(error)
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_choose_blocks_gives_every_sm_several_programs_on_qwen7b_shapes(monkeypatch):
    monkeypatch.setattr(gemv_int4, "TABLE", {})  # the rule, for shapes the sweep's table does not hold
    for n, k in ((512, 3584), (4608, 3584), (3584, 3584), (37888, 3584), (3584, 18944)):
        block_n, groups, split, warps = gemv_int4.choose_blocks(n, k, 132)
        assert -(-n // block_n) * split >= 4 * 132, (n, k)
        assert k // 128 // split >= groups, (n, k)  # every split has work
        assert block_n * (128 // 8) // 4 >= 32 * warps, (n, k)  # four words a thread: no replicated tile


def test_the_swept_table_is_used_at_group_size_128_only_and_each_entry_can_run(monkeypatch):
    """Each entry came from one of int4_shapes.py's sweep spaces, leaves every split whole iterations of
    groups, and gives every thread its own four words (a tile smaller than the threads is replicated);
    group size 64 and shapes not in the table take the rule."""
    source = (Path(__file__).parents[1] / "tools/device/int4_shapes.py").read_text()
    spaces = [ast.literal_eval(source.split(f"\n{name} = ", 1)[1].split("\n", 1)[0].split("  #", 1)[0])
              for name in ("QUICK", "WIDE")]  # the configurations the sweeps can pick from
    table = dict(gemv_int4.TABLE)
    assert table, "the sweep's table is empty"
    for (n, k), blocks in table.items():
        block_n, groups, split, warps, *variant = blocks
        assert gemv_int4.choose_blocks(n, k, 132, 128, bf16x2_ok=True) == blocks
        assert variant[:1] in ([], [True]) and variant[1:2] in ([], [0], [1], [2]), (n, k, blocks)  # bf16x2, tile
        assert variant[2:] in ([], [1]) or (variant[1] == 1 and variant[2] in (3, 4, 5)), (n, k, blocks)  # stages
        assert gemv_int4.choose_blocks(n, k, 132) == blocks[:4]  # not Hopper, or not bf16: never the PTX word
        assert any(blocks[:4] in set(itertools.product(*space.values())) for space in spaces), (n, k, blocks)
        assert k // 128 // split >= groups, (n, k, blocks)
        assert block_n * (128 // 8) // 4 >= 32 * warps, (n, k, blocks)
    monkeypatch.setitem(gemv_int4.TABLE, (64, 256), (32, 2, 1, 4, True))  # an entry naming the variant
    assert gemv_int4.choose_blocks(64, 256, 132, 128, bf16x2_ok=True) == (32, 2, 1, 4, True)
    assert gemv_int4.choose_blocks(64, 256, 132) == (32, 2, 1, 4)
    at_64 = {shape: gemv_int4.choose_blocks(*shape, 132, 64) for shape in table}
    monkeypatch.setattr(gemv_int4, "TABLE", {})
    assert at_64 == {shape: gemv_int4.choose_blocks(*shape, 132, 64) for shape in table}


def _bf16_halves(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A tensor of 32-bit words (int64 holding 0..2^32-1) as its (low, high) bf16 halves, in float32."""
    lo = (v & 0xFFFF).to(torch.int32) << 16
    hi = (v >> 16 & 0xFFFF).to(torch.int32) << 16
    return lo.view(torch.float32), hi.view(torch.float32)


def _bf16_pair(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Two float32 tensors rounded to bf16 (round to nearest even) packed into 32-bit words."""
    bits = [(t.to(torch.bfloat16).view(torch.int16).to(torch.int64) & 0xFFFF) for t in (lo, hi)]
    return bits[0] | bits[1] << 16


def run_ptx(asm: str, args: list[torch.Tensor]) -> torch.Tensor:
    """A model of the PTX instructions BF16X2_WORD uses, on int64 tensors of 32-bit words (one
    element per call): bf16x2 results rounded to nearest even, as the hardware's .rn does (the fma
    adds in float32 first: the test's tolerance covers that double rounding). $0 is returned."""
    regs = {f"${i + 1}": a.to(torch.int64) & 0xFFFFFFFF for i, a in enumerate(args)}

    def value(operand: str) -> torch.Tensor:
        return regs[operand] if operand in regs else torch.tensor(int(operand) & 0xFFFFFFFF)

    for line in asm.strip().strip("{}").splitlines():
        line = line.strip().rstrip(";")
        if not line or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        dest, *ins = [part.strip() for part in rest.split(",")]
        vals = [value(o) for o in ins]
        if op == "lop3.b32":
            a, b, c, lut = vals[0], vals[1], vals[2], int(ins[3])
            out = torch.zeros_like(a)
            for bit in range(8):  # the LUT's bit (a_bit << 2 | b_bit << 1 | c_bit) gives the result
                if lut >> bit & 1:
                    ma = a if bit & 4 else ~a
                    mb = b if bit & 2 else ~b
                    mc = c if bit & 1 else ~c
                    out = out | (ma & mb & mc)
            result = out & 0xFFFFFFFF
        elif op == "shr.u32":
            result = vals[0] >> vals[1]
        elif op == "shl.b32":
            result = (vals[0] << vals[1]) & 0xFFFFFFFF
        elif op == "and.b32":
            result = vals[0] & vals[1]
        elif op in ("sub.rn.bf16x2", "mul.rn.bf16x2", "fma.rn.bf16x2"):
            halves = [_bf16_halves(v) for v in vals]
            pick = {"sub.rn.bf16x2": lambda a, b: a - b, "mul.rn.bf16x2": lambda a, b: a * b,
                    "fma.rn.bf16x2": lambda a, b, c: a * b + c}[op]
            result = _bf16_pair(*(pick(*(h[i] for h in halves)) for i in (0, 1)))
        elif op == "add.f32":
            a, b = (v.to(torch.int32).view(torch.float32) for v in vals)
            result = (a + b).view(torch.int32).to(torch.int64) & 0xFFFFFFFF
        else:
            raise AssertionError(f"the model does not know {op}")
        regs[dest] = result
    return regs["$0"].to(torch.int32).view(torch.float32)


@pytest.mark.parametrize("group_size", [128, 64])
def test_the_bf16x2_word_computes_the_dequantised_product(group_size):
    """BF16X2_WORD's instructions, run on a model of each (Triton's interpreter cannot run PTX), fed
    as the kernel feeds them (activation pairs of nibbles j and j + 4, the (128 + zero) pair), give
    each row's sum of the dequantised weight times x within bf16's rounding; a wrong mask, magic,
    shift or pairing fails it."""
    torch.manual_seed(4)
    n, k = 24, 4 * group_size
    words = group_size // 8
    q = torch.randint(0, 16, (n, k))
    zeros = torch.randint(0, 17, (n, k // group_size), dtype=torch.uint8)  # 16: GPTQ v1's wrapped zero
    scales = (torch.rand(n, k // group_size) * 0.02 + 0.001).to(torch.float16)
    qweight = gemv_int4.pack(q, group_size)
    x = torch.randn(k).to(torch.bfloat16)
    bits = x.view(torch.int16).to(torch.int64) & 0xFFFF  # [K] bf16 bits

    def word_sums(asm: str, g: int) -> torch.Tensor:
        """[N, W]: each word of group g through `asm`, fed as the kernel feeds it."""
        base = bits[g * group_size:(g + 1) * group_size].reshape(4, words, 2)  # [j, word, pair half]
        pairs = [(base[j, :, 0] | base[j, :, 1] << 16)[None, :] for j in range(4)]  # x's 32-bit words
        zz = ((zeros[:, g].to(torch.int64) | 0x4300) * 0x10001)[:, None]
        return run_ptx(asm, [qweight[:, g * words:(g + 1) * words], *pairs, zz])

    got = torch.zeros(n)
    for g in range(k // group_size):
        got += word_sums(gemv_int4.BF16X2_WORD, g).sum(dim=1) * scales[:, g].float()
    want = gemv_int4.dequantize(qweight, scales, zeros, group_size) @ x.float()
    assert ((got - want).norm() / want.norm()).item() < 5e-3
    # the model is not lenient: pairing nibble j with nibble j + 1's input instead fails
    bad = gemv_int4.BF16X2_WORD.replace("$1, 4;", "$1, 8;", 1)
    right, wrong = (word_sums(asm, 0).sum(dim=1) for asm in (gemv_int4.BF16X2_WORD, bad))
    assert ((right - wrong).norm() / right.norm()).item() > 0.05


def test_the_bf16x2_variant_refuses_fp16_activations():
    qweight = torch.zeros(8, 16, dtype=torch.int32)
    scales = torch.ones(8, 1, dtype=torch.float16)
    zeros = torch.zeros(8, 1, dtype=torch.uint8)
    with pytest.raises(ValueError, match="bf16 activations"):
        gemv_int4.launch(torch.zeros(128, dtype=torch.float16), qweight, scales, zeros, None, 128, (8, 1, 1, 1, True))


def test_pack_and_unpack_are_inverse_and_nibbles_j_and_j_plus_4_hold_adjacent_inputs():
    q = torch.randint(0, 16, (3, 32))
    packed = gemv_int4.pack(q, 16)  # two groups of two words
    assert packed.shape == (3, 4) and packed.dtype == torch.int32
    assert torch.equal(gemv_int4.unpack(packed, 16), q.int())
    word = packed[0, 1].item()  # the first group's second word: the pairs (2, 3), (6, 7), (10, 11), (14, 15)
    nibbles = [(word >> (4 * i)) & 0xF for i in range(8)]
    assert nibbles[:4] == q[0, 2:16:4].tolist() and nibbles[4:] == q[0, 3:16:4].tolist()
    assert (packed[0, 2].item() & 0xF) == q[0, 16]  # the second group starts at its own first input
    assert (packed[0, 2].item() >> 16 & 0xF) == q[0, 17]  # and its pair's second input in nibble 4


def test_awq_repacking_is_bit_exact():
    torch.manual_seed(0)
    for n, k, g in ((48, 384, 128), (24, 320, 64)):
        weight = torch.randn(n, k) * 0.05
        awq = formats.awq_quantize(weight, g)
        mine = gemv_int4.from_awq(awq["qweight"], awq["qzeros"], awq["scales"])
        assert mine["qweight"].shape == (n, k // 8) and mine["scales"].shape == mine["zeros"].shape == (n, k // g)
        assert mine["scales"].stride() == mine["zeros"].stride() == (1, n)  # group-major, as the kernel reads best
        got = gemv_int4.dequantize(mine["qweight"], mine["scales"], mine["zeros"], g)
        assert torch.equal(got, formats.awq_dequantize(awq, g))


def test_gptq_repacking_is_bit_exact_including_the_v1_zero_that_wraps():
    torch.manual_seed(1)
    n, k, g = 32, 384, 128
    weight = torch.randn(n, k) * 0.05
    gptq = formats.gptq_quantize(weight, g)  # symmetric: zero 8, stored as 7
    mine = gemv_int4.from_gptq(gptq["qweight"], gptq["qzeros"], gptq["scales"], gptq["g_idx"], g)
    assert mine["scales"].stride() == mine["zeros"].stride() == (1, n)
    assert torch.equal(gemv_int4.dequantize(mine["qweight"], mine["scales"], mine["zeros"], g),
                       formats.gptq_dequantize(gptq, g))
    # asymmetric zeros, 0 among them: v1 stores zero - 1 = -1 -> 15, which reads back as 16
    q, scales, zeros = formats.rtn_asymmetric(weight.abs(), g)  # all positive: zero 0 everywhere
    assert (zeros == 0).all()
    asym = {
        "qweight": formats.pack_columns(q.contiguous(), formats.SEQUENTIAL).t().contiguous(),
        "qzeros": formats.pack_columns((zeros - 1).t().contiguous() & 0xF, formats.SEQUENTIAL),
        "scales": scales.t().contiguous().half(),
    }
    mine = gemv_int4.from_gptq(asym["qweight"], asym["qzeros"], asym["scales"], None, g)
    assert (mine["zeros"] == 16).all()
    assert torch.equal(gemv_int4.dequantize(mine["qweight"], mine["scales"], mine["zeros"], g),
                       formats.gptq_dequantize(asym, g))
    shuffled = gptq["g_idx"].flip(0)
    with pytest.raises(ValueError, match="act-order"):
        gemv_int4.from_gptq(gptq["qweight"], gptq["qzeros"], gptq["scales"], shuffled, g)


def test_backend_bytes_are_what_the_module_stores_and_it_is_cuda_only():
    from qbench.api import DeviceInfo
    from qbench.registry import load_backend

    backend = load_backend("qbench-int4")
    assert backend.unavailable_reason(DeviceInfo("cpu", "cpu")) == "needs a CUDA GPU (none detected)"
    torch.manual_seed(2)
    for n, k, g in ((48, 384, 128), (24, 320, 64)):
        linear = torch.nn.Linear(k, n, bias=True)
        module = backend.quantize_linear(linear, g)
        assert module.stored_bytes() == backend.linear_bytes(k, n, g) == k * n // 2 + (k // g) * n * 3
        assert torch.equal(module.dequantize(), formats.awq_dequantize(formats.awq_quantize(linear.weight, g), g))
        # from GPTQ tensors too (told apart by qweight's shape)
        gptq = formats.gptq_quantize(linear.weight.detach(), g)
        from_gptq = backend.from_checkpoint_tensors(dict(gptq), linear, g)
        assert from_gptq.source == "gptq" and from_gptq.stored_bytes() == backend.linear_bytes(k, n, g)


def test_the_prefills_triton_dequantisation_is_the_torch_one_element_for_element():
    out = run_interpreted(
        """
        import torch
        from qbench.runtimes.kernels import gemv_int4 as G
        torch.manual_seed(4)
        for n, k, g in ((40, 640, 128), (72, 384, 64), (8, 256, 128)):  # N not a multiple of the 32 rows
            q = torch.randint(0, 16, (n, k))
            scales = (torch.rand(n, k // g) * 0.02 + 0.001).half()
            zeros = torch.randint(0, 17, (n, k // g)).to(torch.uint8)
            qweight = G.pack(q, g)
            for layout in (lambda t: t, G.group_major):
                exact = G.dequantize(qweight, layout(scales), layout(zeros), g)  # float32
                for dtype in (torch.float32, torch.float16, torch.bfloat16):
                    want = exact.to(dtype)
                    got = G.dequantize_triton(qweight, layout(scales), layout(zeros), g, dtype)
                    assert got.dtype == dtype and got.shape == want.shape, (n, k, g, dtype)
                    if dtype == torch.bfloat16:  # the interpreter truncates float32 to bf16 (the GPU rounds
                        # to nearest even, as torch does and the kernel asks): either, element by element
                        cut = (exact.view(torch.int32) & -65536).view(torch.float32).to(dtype)
                        assert ((got == want) | (got == cut)).all(), (n, k, g)
                    else:
                        assert torch.equal(got, want), (n, k, g, dtype)
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_the_prefills_triton_dequantisation_refuses_what_it_would_read_wrong():
    q = torch.randint(0, 16, (8, 256))
    scales, zeros = torch.rand(8, 2).half(), torch.randint(0, 17, (8, 2)).to(torch.uint8)
    qweight = gemv_int4.pack(q, 128)
    for bad in ((qweight, gemv_int4.group_major(scales), zeros), (qweight.t().contiguous().t(), scales, zeros)):
        with pytest.raises(ValueError, match="one layout"):
            gemv_int4.dequantize_triton(*bad, 128, torch.bfloat16)


def test_a_prefill_dequantises_slices_of_rows_and_gets_the_same_weight(monkeypatch):
    """More than one row (a prefill) multiplies by the dequantised packed weight; it is made a slice
    of rows at a time (the whole weight's float32 and int32 temporaries held qbench-int4's GPU memory
    3 GB above torch-int4's on the H100: results/h100/evidence23), element for element the same."""
    from qbench.registry import load_backend

    torch.manual_seed(3)
    n, k, g = 40, 384, 128
    linear = torch.nn.Linear(k, n, bias=True).to(torch.bfloat16)
    module = load_backend("qbench-int4").quantize_linear(linear, g)
    module.release_reference()
    whole = gemv_int4.dequantize(module.qweight, module.scales, module.zeros, g).to(torch.bfloat16)
    monkeypatch.setattr(gemv_int4, "SLICE_ELEMENTS", 7 * k)  # 7 rows a slice: 40 rows in 6 slices, the last ragged
    seen = []
    real = gemv_int4.dequantize
    monkeypatch.setattr(gemv_int4, "dequantize", lambda q, *rest: seen.append(q.shape[0]) or real(q, *rest))
    assert torch.equal(gemv_int4.dequantize_as(module.qweight, module.scales, module.zeros, g, torch.bfloat16), whole)
    assert seen == [7, 7, 7, 7, 7, 5]
    seen.clear()
    x = torch.randn(3, k, dtype=torch.bfloat16)
    got = module(x)
    assert torch.equal(got, torch.nn.functional.linear(x, whole, module.bias)) and max(seen) <= 7


def test_lean_with_qbench_int4_fuses_and_matches_hf():
    out = run_interpreted(INT4_TINY_LEAN + dedent(
        """
        model = load()
        lean = LeanRunner(model, 96, "cpu")
        assert any("qbench's int4 GEMV (8 launches: q, k, v as one and gate, up as another; o and down through" in n
                   for n in lean.notes), lean.notes
        attention = model.get_decoder().layers[0].self_attn
        base = attention.q_proj.qweight.untyped_storage().data_ptr()
        assert attention.v_proj.qweight.untyped_storage().data_ptr() == base  # views into one buffer
        fused_rows = sum(p.out_features for p in (attention.q_proj, attention.k_proj, attention.v_proj))
        for proj in (attention.q_proj, attention.v_proj):  # scales and zeros stay group-major when fused
            assert proj.scales.stride() == proj.zeros.stride() == (1, fused_rows)
        layers = [m for _, m in lean.quant_layers()]
        stored = sum(m.stored_bytes() for m in layers)  # the fused views: still each layer's formula
        assert stored == sum(backend.linear_bytes(m.in_features, m.out_features, 128) for m in layers)
        lean.prefill(tokens[:60])  # a prompt: the modules dequantise their packed weights
        got = [lean.step(tokens[p : p + 1]).float() for p in range(60, 62)]  # the fused kernels
        # the gate's reference: the hf runtime on the plain path, the checkpoint's AWQ tensors dequantised
        lean.reference(True)
        lean.prefill(tokens[:60])
        want = [lean.step(tokens[p : p + 1]).float() for p in range(60, 62)]
        for a, b in zip(got, want):
            assert ((a - b).norm() / b.norm()).item() < 2e-2 and a.argmax() == b.argmax()
        print("ok")
        """
    ))
    assert out.strip() == "ok"


def test_the_kernel_compiles_for_an_h100_and_its_weight_loads_are_128_bit():
    """Triton's interpreter runs what its compiler refuses (a module-level float inside the kernel
    did, on the H100): compile for sm_90 here, no GPU needed, and check the weight loads' width."""
    # (split-K, bias, bf16x2, tile, rows a program, groups an iteration, warps); the last two: SMALL=1's few rows
    for split_k, bias, bf16x2, tile, rows, groups, warps in (
        (True, False, False, 0, 32, 2, 4), (False, True, False, 0, 32, 2, 4), (True, False, True, 0, 32, 2, 4),
        (True, False, True, 1, 32, 2, 4), (False, False, True, 2, 32, 2, 4), (True, True, False, 2, 32, 2, 4),
        (False, True, True, 2, 4, 4, 1), (True, False, True, 1, 2, 8, 1),
    ):
        constants = {"GROUP": 128, "GROUPS": groups, "HAS_BIAS": bias, "SPLIT_K": split_k, "BLOCK_N": rows,
                     "BF16X2": bf16x2, "PDL": False, "SN": 1, "TILE": tile}  # group-major scales, as qbench-int4's
        ptx = int4_ptx(constants, warps)
        if ptx is None:  # no ptxas in this Triton: the front end still ran
            continue
        loads = [line for line in ptx.splitlines() if "ld.global" in line and ".b32" in line]
        assert any(".v4.b32" in line and "evict_first" in line for line in loads), loads
        # the bf16x2 variant's word is in the PTX ptxas accepted (sm_90), the float32 path's is not
        assert ("sub.rn.bf16x2" in ptx) == bf16x2


def test_the_prefills_dequantisation_compiles_for_an_h100_rounds_to_nearest_and_stores_whole_runs():
    """The interpreter truncates to bf16 (above); compiled for sm_90 the kernel rounds to nearest
    even, as torch's .to(bfloat16) does: so on the GPU the two are the same weight. Its stores are
    128 bits a thread: one a nibble, every other bf16 (16-bit stores, 32 a thread a group), was what
    the time to first token on the H100 rose with (gemv_int4.dequantize_triton's docstring)."""
    signature = {"QW": "*i32", "S": "*fp16", "Z": "*u8", "OUT": "*bf16", "N": "i32", "KW": "i32", "SN": "i32",
                 "SG": "i32", "GROUP": "constexpr", "BLOCK_N": "constexpr"}
    # as a launch on Qwen2.5-7B's shapes sees its pointers and sizes (16-aligned), group-major scales
    ptx = ptx_for_sm90(gemv_int4._dequantize_kernel(), signature, {"GROUP": 128, "BLOCK_N": 32, "SN": 1},
                       aligned=("QW", "S", "Z", "OUT", "KW", "SG"))
    if ptx is None:
        pytest.skip("this Triton has no ptxas: the kernel cannot be assembled for sm_90 here (its front end ran)")
    casts = [line.split()[0] for line in ptx.splitlines() if "cvt" in line and ".bf16" in line and ".f32" in line]
    assert casts and all(cast.startswith("cvt.rn.bf16") for cast in casts), casts  # one value or a pair
    stores = [word for line in ptx.splitlines() for word in line.split() if word.startswith("st.global")]
    assert stores and set(stores) == {"st.global.v4.b32"}, stores  # 8 bf16 a thread a store


def test_the_tiles_issue_an_iterations_weight_loads_together_on_an_h100():
    """gemv_int4's "Tiles", compiled for sm_90 and disassembled (tools/int4_sass.py): tiles 1 and 2
    issue an iteration's GROUPS 128-bit weight loads one after another before any multiply-add; tile
    0's separate loads are listed as the compiler places them (one at a time, where this was written)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tools" / "int4_sass.py"
    spec = importlib.util.spec_from_file_location("int4_sass", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    if int4_ptx({**tool.constants(32, 4, True), "TILE": 0}) is None:
        pytest.skip("this Triton has no ptxas: the kernel cannot be assembled for sm_90 here")
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm").is_file():
        pytest.skip("this Triton has no nvdisasm: the SASS cannot be listed here")
    runs = {tile: tool.weight_load_runs(tool.sass(tool.constants(32, 4, True, tile), 4)) for tile in (0, 1, 2)}
    assert sum(runs[0]) >= 4, runs  # the loop's four loads are there
    assert max(runs[1]) >= 4 and max(runs[2]) >= 4, runs
    assert tool.weight_load_runs("LDG.E.EF.128\nHFMA2\nLDG.E.EF.128\nLDG.E.EF.128\nFFMA\n") == [1, 2]


def test_stages_pipeline_tile_1s_loads_as_asynchronous_copies_on_an_h100():
    """gemv_int4's "Stages" compiled for sm_90: with stages 1 tile 1's weight loads are 128-bit global
    loads into registers and nothing is copied asynchronously; with 3 Triton's pipeliner turns them into
    16-byte cp.async copies into shared memory, waited on by group (the loads issued ahead)."""
    base = {"GROUP": 128, "GROUPS": 2, "HAS_BIAS": False, "SPLIT_K": True, "BLOCK_N": 32, "BF16X2": True,
            "PDL": False, "SN": 1, "TILE": 1}
    plain = int4_ptx({**base, "STAGES": 1})
    if plain is None:
        pytest.skip("this Triton has no ptxas: the kernel cannot be assembled for sm_90 here")
    assert "cp.async" not in plain
    assert any("ld.global" in line and ".v4.b32" in line for line in plain.splitlines())
    piped = int4_ptx({**base, "STAGES": 3})
    copies = [line for line in piped.splitlines() if "cp.async.cg.shared.global" in line and "0x10," in line]
    assert copies and "cp.async.wait_group" in piped, piped[:400]


def test_stages_are_refused_without_tile_1():
    x, qweight = torch.zeros(256, dtype=torch.bfloat16), torch.zeros(8, 32, dtype=torch.int32)
    scales, zeros = torch.ones(8, 2, dtype=torch.float16), torch.zeros(8, 2, dtype=torch.uint8)
    for blocks in ((8, 1, 1, 1, False, 2, 3), (8, 1, 1, 1, False, 0, 2), (8, 1, 1, 1, False, 1, 0)):
        with pytest.raises(ValueError, match="stages"):
            gemv_int4.launch(x, qweight, scales, zeros, None, 128, blocks)
