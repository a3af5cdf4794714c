"""lean's split-K decode attention (qbench/runtimes/decode_attention.py), run by Triton's interpreter
on the CPU: against the float32 reference, and inside lean against lean's SDPA path.

The interpreter is switched on per process (TRITON_INTERPRET is read when a kernel is defined), so
each check runs in a child Python. Its tl.dot is wrong for bfloat16 inputs (numpy has no bfloat16
matmul), so the checks use float16 and float32; the kernel is the same for every dtype, and on the
GPU every lean session's gate checks the bfloat16 logits against transformers'.
"""

import pytest
from conftest import decode_attention_ptx, run_interpreted, tiny_model

pytest.importorskip("triton", reason="Triton not installed (the test extra installs it on Linux x86-64)")


def test_split_k_attention_matches_the_reference_and_never_reads_past_the_position():
    out = run_interpreted(
        """
        import torch
        from qbench.runtimes.kernels.decode_attention import decode_attention, decode_attention_reference
        torch.manual_seed(0)
        cases = [  # heads, kv heads, head dim, cache positions, position, programs
            (28, 4, 128, 300, 299, 16),  # Qwen2.5-7B's grouping, last position, chunks of 96
            (28, 4, 128, 300, 130, 64),  # mid-cache: later chunks return at once
            (9, 3, 64, 100, 0, 64),  # only position 0
            (4, 4, 48, 70, 33, 4),  # no grouping; a head dim padded to 64
            (12, 1, 16, 50, 49, 1),  # one kv head, one chunk
            (8, 2, 64, 700, 690, 64),  # 22 chunks
            (4, 2, 32, 4500, 4400, 400),  # 141 chunks: the combine walks them 64 at a time, three blocks
            (4, 2, 32, 4500, 2100, 400),  # mid-cache: the combine stops at the position's chunk
        ]
        for dtype in (torch.float32, torch.float16):
            for heads, kv_heads, dim, positions, position, programs in cases:
                q = torch.randn(heads, dim, dtype=dtype)
                k = torch.randn(kv_heads, positions, dim, dtype=dtype)
                v = torch.randn(kv_heads, positions, dim, dtype=dtype)
                k[:, position + 1 :] = float("nan")  # never written: reading or counting them poisons the output
                v[:, position + 1 :] = float("nan")
                at = torch.tensor([position])
                got = decode_attention(q, k, v, at, dim**-0.5, programs).float()
                want = decode_attention_reference(q, k, v, at, dim**-0.5).float()
                assert torch.isfinite(got).all(), (dtype, heads, position)
                err = ((got - want).abs().max() / want.abs().max()).item()
                assert err < (1e-5 if dtype == torch.float32 else 2e-3), (dtype, heads, position, err)
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_the_fused_combine_matches_the_reference_call_after_call():
    """One launch: the last chunk of each kv head to arrive combines them (an arrival counter a kv head,
    reset by that program). Called twice on each case: a counter left non-zero would leave the second
    call's output unwritten."""
    out = run_interpreted(
        """
        import torch
        from qbench.runtimes.kernels import decode_attention as attention
        torch.manual_seed(0)
        cases = [  # heads, kv heads, head dim, cache positions, position, programs
            (28, 4, 128, 300, 299, 16),  # Qwen2.5-7B's grouping, last position
            (9, 3, 64, 100, 0, 64),  # only position 0: chunk 0 alone combines
            (8, 2, 64, 700, 300, 64),  # mid-cache: the chunks past the position do not count
            (4, 2, 32, 4500, 4400, 400),  # 141 chunks: 18 blocks of 8 in the last program
        ]
        for dtype in (torch.float32, torch.float16):
            for heads, kv_heads, dim, positions, position, programs in cases:
                k = torch.randn(kv_heads, positions, dim, dtype=dtype)
                v = torch.randn(kv_heads, positions, dim, dtype=dtype)
                k[:, position + 1 :] = float("nan")
                v[:, position + 1 :] = float("nan")
                at = torch.tensor([position])
                for call in range(2):
                    q = torch.randn(heads, dim, dtype=dtype)
                    got = attention._launch(q, k, v, at, dim**-0.5, programs, 0, fused=True).float()
                    want = attention.decode_attention_reference(q, k, v, at, dim**-0.5).float()
                    assert torch.isfinite(got).all(), (dtype, heads, position, call)
                    err = ((got - want).abs().max() / want.abs().max()).item()
                    assert err < (1e-5 if dtype == torch.float32 else 2e-3), (dtype, heads, position, call, err)
                assert attention._counter(q.device, kv_heads).eq(0).all()
        try:
            attention._launch(q, k, v, at, dim**-0.5, programs, 0, pdl=True, fused=True)
        except ValueError as error:
            print("refused:", error)
        print("ok")
        """
    )
    assert out.strip().splitlines()[-1] == "ok"
    assert "refused: decode_attention: the fused combine is not built for programmatic" in out


def test_rope_and_the_cache_write_inside_the_kernel_match_the_step_doing_them():
    out = run_interpreted(
        """
        import torch
        from qbench.runtimes.kernels.decode_attention import (
            decode_attention_reference, decode_attention_rope, rope_reference)
        torch.manual_seed(0)
        cases = [  # heads, kv heads, head dim, cache positions, position, programs
            (28, 4, 128, 300, 299, 16),  # Qwen2.5-7B's grouping, last position
            (28, 4, 128, 300, 130, 64),  # mid-chunk: the owner is neither the first nor the last chunk
            (9, 3, 64, 100, 0, 64),  # position 0: the first chunk owns it
            (4, 4, 48, 70, 64, 4),  # a head dim padded to 64; the position opens a chunk
        ]
        for dtype in (torch.float32, torch.float16):
            for heads, kv_heads, dim, positions, position, programs in cases:
                layers = 2
                cache = torch.randn(layers, 2, kv_heads, positions, dim, dtype=dtype)
                cache[:, :, :, position:] = float("nan")  # the position's slot too: not written yet
                before = cache.clone()
                q, k, v = (torch.randn(n * dim, dtype=dtype) for n in (heads, kv_heads, kv_heads))
                freqs = torch.rand(positions, dim // 2) * 3
                cos = torch.cat((freqs.cos(), freqs.cos()), -1).to(dtype)
                sin = torch.cat((freqs.sin(), freqs.sin()), -1).to(dtype)
                at = torch.tensor([position])
                got = decode_attention_rope(q.view(heads, dim), k, v, cache, 1, cos, sin, at, dim**-0.5, programs)
                # the step's way: rotate, write, attend
                k_rot = rope_reference(k.view(kv_heads, dim), cos[position], sin[position]).to(dtype)
                q_rot = rope_reference(q.view(heads, dim), cos[position], sin[position]).to(dtype)
                want_cache = before.clone()
                want_cache[1, 0, :, position] = k_rot
                want_cache[1, 1, :, position] = v.view(kv_heads, dim)
                want = decode_attention_reference(q_rot, want_cache[1, 0], want_cache[1, 1], at, dim**-0.5).float()
                assert torch.isfinite(got).all(), (dtype, heads, position)
                err = ((got.float() - want).abs().max() / want.abs().max()).item()
                assert err < (1e-5 if dtype == torch.float32 else 2e-3), (dtype, heads, position, err)
                # the slot is written, in every kv head, and nothing else of the cache changes
                assert torch.equal(cache[1, :, :, position], want_cache[1, :, :, position]), (dtype, position)
                assert torch.equal(cache[0].nan_to_num(7.0), before[0].nan_to_num(7.0))  # another layer
                rest = torch.ones(positions, dtype=torch.bool)
                rest[position] = False
                assert torch.equal(cache[1][:, :, rest].nan_to_num(7.0), before[1][:, :, rest].nan_to_num(7.0))
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_plan_splits_covers_the_cache_in_whole_blocks():
    from qbench.runtimes.kernels.decode_attention import BLOCK_N, plan_splits

    for positions, kv_heads, programs in [(2087, 4, 264), (96, 2, 16), (50, 1, 1), (31, 8, 1000)]:
        chunk, splits = plan_splits(positions, kv_heads, programs)
        assert chunk % BLOCK_N == 0 and chunk * splits >= positions > chunk * (splits - 1)
    assert plan_splits(2087, 4, 264)[1] == 66  # Qwen2.5-7B on 132 SMs: about two programs per SM


def test_lean_with_split_k_attention_matches_lean_with_sdpa():
    out = run_interpreted(
        """
        import os, torch
        from qbench.api import LoadOptions
        from qbench.session.decode import token_stream
        from qbench.registry import load_backend
        from qbench.runtimes.lean import LeanRunner
        from qbench.specs import load_model_spec
        spec = load_model_spec("tiny")
        options = LoadOptions(device="cpu", weights="synthetic", seed=0, max_cache_len=96, group_size=128)
        model = load_backend("bf16").load(spec, options).model.to(torch.float16)
        runners = {}
        for choice, rope, combine in (("split-k", "auto", "kernel"), ("split-k", "step", "kernel"),
                                      ("sdpa", "auto", "kernel"), ("split-k", "auto", "fused")):
            os.environ["QBENCH_LEAN_ATTENTION"], os.environ["QBENCH_LEAN_ROPE"] = choice, rope
            os.environ["QBENCH_LEAN_COMBINE"] = combine
            runners[choice, rope, combine] = LeanRunner(model, 96, "cpu")
        split, separate = runners["split-k", "auto", "kernel"], runners["split-k", "step", "kernel"]
        sdpa, fused = runners["sdpa", "auto", "kernel"], runners["split-k", "auto", "fused"]
        assert "split-K Triton kernel" in split.notes[0], split.notes
        assert (split.attention_fused, fused.attention_fused) == (False, True)
        assert not any("combine" in note for note in split.notes), split.notes
        assert "lean: decode attention's combine: in its one launch, by each kv head's last chunk " \
            "(QBENCH_LEAN_COMBINE=fused)" in fused.notes, fused.notes
        where = "lean: rotary embedding and the K/V cache write"
        assert f"{where}: inside the split-K attention's first kernel" in split.notes, split.notes
        assert f"{where}: in the step (QBENCH_LEAN_ROPE=step)" in separate.notes, separate.notes
        assert sdpa.notes[0] == "lean: decode attention: SDPA (QBENCH_LEAN_ATTENTION=sdpa)"
        assert (split.rope_in_attention, separate.rope_in_attention, sdpa.rope_in_attention) == (True, False, False)
        tokens = token_stream(spec.vocab_size, 72, 0, "cpu")
        for runner in runners.values():
            runner.prefill(tokens[:60])
        for p in range(60, 70):
            want = sdpa.step(tokens[p : p + 1]).float()
            steps = (split, separate, fused)
            for got in (runner.step(tokens[p : p + 1]).float() for runner in steps):
                assert ((got - want).norm() / want.norm()).item() < 5e-3 and got.argmax() == want.argmax(), p
        # the kernel wrote each step's rotated k and v where the step's own write puts them
        assert torch.allclose(split.kv_cache[:, :, :, :70].float(), separate.kv_cache[:, :, :, :70].float(), atol=2e-3)
        print("ok")
        """
    )
    assert out.strip() == "ok"


@pytest.mark.parametrize(
    "variable, bad, allowed, note",
    [
        ("QBENCH_LEAN_ATTENTION", "flash", "auto, sdpa or split-k",
         "lean: decode attention: SDPA (the split-K kernel runs on CUDA)"),
        ("QBENCH_LEAN_GEMV", "cutlass", "auto, cublas or triton",
         "lean: 16-bit linear layers: F.linear (the Triton GEMV runs on CUDA)"),
        ("QBENCH_LEAN_ROPE", "kernel", "auto or step",  # SDPA on a CPU: the step rotates, nothing to say
         "lean: decode attention: SDPA (the split-K kernel runs on CUDA)"),
        ("QBENCH_LEAN_COMBINE", "inline", "kernel or fused",  # the default: the combine kernel, nothing to say
         "lean: decode attention: SDPA (the split-K kernel runs on CUDA)"),
    ],
)
def test_lean_triton_path_choices_are_checked_and_said(monkeypatch, variable, bad, allowed, note):
    import torch

    from qbench.runtimes.lean import LeanRunner

    model = tiny_model("bf16")
    monkeypatch.setenv(variable, bad)
    with pytest.raises(ValueError, match=allowed):
        LeanRunner(model, 32, "cpu")
    monkeypatch.delenv(variable)
    runner = LeanRunner(model, 32, "cpu")
    assert note in runner.notes
    assert isinstance(runner.step(torch.tensor([1])), torch.Tensor)


def test_a_fused_combine_asked_for_where_sdpa_runs_is_said_and_not_used(monkeypatch):
    from qbench.runtimes.lean import LeanRunner

    monkeypatch.setenv("QBENCH_LEAN_COMBINE", "fused")
    runner = LeanRunner(tiny_model("bf16"), 32, "cpu")  # on the CPU without the interpreter: SDPA
    assert not runner.attention_fused
    assert ("lean: decode attention's combine: not used (QBENCH_LEAN_COMBINE=fused needs the split-K attention)"
            in runner.notes), runner.notes


def test_lean_energy_room_leaves_the_timed_steps_alone_and_attends_past_them():
    out = run_interpreted(
        """
        import os, torch
        from qbench.api import LoadOptions
        from qbench.session.decode import token_stream
        from qbench.registry import load_backend
        from qbench.runtimes.lean import LeanRunner
        from qbench.specs import load_model_spec
        spec = load_model_spec("tiny")
        options = LoadOptions(device="cpu", weights="synthetic", seed=0, max_cache_len=72, group_size=128)
        model = load_backend("bf16").load(spec, options).model.to(torch.float16)
        os.environ["QBENCH_LEAN_ATTENTION"] = "split-k"
        roomy, plain = LeanRunner(model, 72, "cpu", energy_positions=40), LeanRunner(model, 72, "cpu")
        assert roomy.max_cache_len == 112 and roomy.kv_cache.shape[3] == 112 and plain.max_cache_len == 72
        assert any("40 cache positions beyond the block" in n and "MiB" in n for n in roomy.notes), roomy.notes
        assert any("x 3 chunks of 32 positions" in n for n in roomy.notes), roomy.notes  # the room's chunk: 96-127
        os.environ["QBENCH_LEAN_ATTENTION"] = "sdpa"
        sdpa = LeanRunner(model, 112, "cpu")
        tokens = token_stream(spec.vocab_size, 112, 0, "cpu")
        for runner in (roomy, plain, sdpa):
            runner.prefill(tokens[:60])
        for p in range(60, 66):  # the block's positions: the same launches with and without the room
            got, want = roomy.step(tokens[p : p + 1]).float(), plain.step(tokens[p : p + 1]).float()
            assert torch.equal(got, want), p
            sdpa.step(tokens[p : p + 1])
        # past the block's positions: still every position attended. The block's 72 positions are 3
        # chunks of 32 (0-95); from position 96 the room's own chunk is read too. The prompt (SDPA, not
        # interpreted) fills the cache to 90, then interpreted steps cross 96.
        for runner in (roomy, sdpa):
            runner.prefill(tokens[:90])
        for p in range(90, 100):
            got, want = roomy.step(tokens[p : p + 1]).float(), sdpa.step(tokens[p : p + 1]).float()
            assert ((got - want).norm() / want.norm()).item() < 5e-3 and got.argmax() == want.argmax(), p
        print("ok")
        """
    )
    assert out.strip() == "ok"


@pytest.mark.parametrize(
    "kernel", ["partial", "partial with rope", "combine", "partial fused", "partial with rope fused"]
)
def test_the_kernels_compile_for_an_h100(kernel):
    """Triton's interpreter runs what its compiler may refuse (a scalar mask, a loop bounded by a
    value read on the device): each kernel compiled for sm_90 here, no GPU needed, at Qwen2.5-7B's
    shapes."""
    fused = kernel.endswith("fused")
    ptx = decode_attention_ptx(kernel.split()[0], rope="with rope" in kernel, fused=fused)
    if ptx is None:  # no ptxas in this Triton: the front end still ran
        return
    assert f"decode_attention_{kernel.split()[0]}" in ptx
    lines = ptx.splitlines()
    if kernel != "combine":  # 16-bit stores: the rope's owner writes this step's k and v; the fused path its output
        stores = sum("st.global.b16" in line or "st.global.v2.b16" in line or "st.global.v4.b16" in line
                     for line in lines)
        assert (stores > 0) == ("with rope" in kernel or fused), stores
        # the fused path's arrival counter: an acquire-release add, then the reset, and nothing else atomic
        counters = [word for line in lines for word in line.split() if word.startswith("atom.")]
        assert (counters == ["atom.global.gpu.acq_rel.add.u32", "atom.global.gpu.acq_rel.exch.b32"]) == fused, counters
