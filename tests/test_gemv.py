"""lean's 16-bit GEMV (qbench/runtimes/gemv.py), run by Triton's interpreter on the CPU in a child
process (as in test_decode_attention.py): against F.linear, and inside lean (q, k, v and gate, up
fused) against lean with F.linear and against the `hf` runtime on the same model."""

import pytest
from conftest import run_interpreted

pytest.importorskip("triton", reason="Triton not installed (the test extra installs it on Linux x86-64)")


def test_gemv_matches_f_linear_for_ragged_shapes_with_and_without_bias():
    out = run_interpreted(
        """
        import torch
        from qbench.runtimes.kernels import gemv
        torch.manual_seed(0)
        cases = [(64, 256, (8, 128, 4), True), (37, 300, (4, 128, 4), False), (5, 96, (16, 64, 2), True),
                 (130, 1000, gemv.choose_blocks(130, 1000, 8), True)]
        for dtype in (torch.float32, torch.float16):
            for n, k, blocks, with_bias in cases:
                w, x = torch.randn(n, k).to(dtype), torch.randn(k).to(dtype)
                b = torch.randn(n).to(dtype) if with_bias else None
                got = gemv.gemv(x, w, b, *blocks)
                want = torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float())
                assert got.dtype == dtype and got.shape == (n,)
                err = ((got.float() - want).abs().max() / want.abs().max()).item()
                assert err < (1e-5 if dtype == torch.float32 else 2e-3), (dtype, n, k, err)
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_choose_blocks_gives_every_sm_several_programs():
    from qbench.runtimes.kernels.gemv import choose_blocks

    for n, k in ((512, 3584), (4608, 3584), (37888, 3584), (3584, 18944), (152064, 3584)):
        block_n, block_k, _ = choose_blocks(n, k, 132)
        assert block_n == 1 or -(-n // block_n) >= 4 * 132, (n, block_n)
        assert block_k == (1024 if k >= 8192 else 512)
        assert choose_blocks(n, k, 132, interpreted=True) == (64, block_k, 4)  # the interpreter: rows a program


def test_lean_with_the_gemv_matches_f_linear_and_hf_and_shares_the_weights():
    out = run_interpreted(
        """
        import os, torch
        from qbench.api import LoadOptions
        from qbench.session.decode import token_stream
        from qbench.registry import load_backend
        from qbench.runtimes.hf import DecoderRunner
        from qbench.runtimes.lean import LeanRunner
        from qbench.specs import load_model_spec
        spec = load_model_spec("tiny")
        options = LoadOptions(device="cpu", weights="synthetic", seed=0, max_cache_len=96, group_size=128)
        model = load_backend("bf16").load(spec, options).model.to(torch.float16)
        attention = model.get_decoder().layers[0].self_attn
        torch.manual_seed(1)
        for layer in model.get_decoder().layers:  # Qwen2's q, k, v biases (the tiny spec has none): fused too
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias = torch.nn.Parameter(torch.randn(proj.out_features, dtype=torch.float16) * 0.1)
        runners = {}
        for choice in ("triton", "cublas"):
            os.environ["QBENCH_LEAN_GEMV"] = choice
            runners[choice] = LeanRunner(model, 96, "cpu")
        notes = runners["triton"].notes
        assert any("qbench's Triton GEMV" in n and "q, k, v as one launch" in n for n in notes), notes
        plain_note = "lean: 16-bit linear layers: F.linear (QBENCH_LEAN_GEMV=cublas)"
        assert plain_note in runners["cublas"].notes
        # q, k and v of a layer are views into one buffer, in order, so nothing is held twice
        base = attention.q_proj.weight.untyped_storage().data_ptr()
        assert attention.k_proj.weight.untyped_storage().data_ptr() == base
        k_weight = attention.k_proj.weight
        assert attention.v_proj.weight.data_ptr() == k_weight.data_ptr() + k_weight.numel() * 2
        hf = DecoderRunner(model, 96, "cpu")
        tokens = token_stream(spec.vocab_size, 72, 0, "cpu")
        fast, plain = runners["triton"], runners["cublas"]
        from qbench.runtimes.kernels.gemv import INTERPRETED_ROWS
        assert {g.blocks[0] for g in fast.linear16.values()} == {INTERPRETED_ROWS}  # on the CPU: the interpreter's
        for r in (fast, plain, hf):
            r.prefill(tokens[:60])
        for p in range(60, 68):
            t = tokens[p : p + 1]
            got, want, ref = fast.step(t).float(), plain.step(t).float(), hf.step(t).float()
            assert ((got - want).norm() / want.norm()).item() < 5e-3 and got.argmax() == want.argmax(), p
            assert ((got - ref).norm() / ref.norm()).item() < 5e-3, p
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_join_rows_concatenates_or_interleaves_and_each_layer_views_the_join():
    """Both fused launches' joins (lean's 16-bit GEMV, qbench-int4's): row-major and group-major
    tensors, concatenated or interleaved; each layer's view equals its tensor and writes into the join
    (the layers keep no copy). Interleaving a third tensor, or two of other shapes, is refused."""
    import torch

    from qbench.runtimes.joined import join_rows

    a, b, c = torch.arange(12.0).view(4, 3), torch.arange(100.0, 112.0).view(4, 3), torch.arange(50.0, 56.0).view(2, 3)
    joined, views = join_rows([a, b, c])
    assert torch.equal(joined, torch.cat([a, b, c]))
    assert all(torch.equal(v, t) for v, t in zip(views, (a, b, c), strict=True))
    joined, views = join_rows([a, b], interleave=True)
    assert torch.equal(joined[0::2], a) and torch.equal(joined[1::2], b)
    assert all(torch.equal(v, t) for v, t in zip(views, (a, b), strict=True))
    views[1][0, 0] = -1.0
    assert joined[1, 0] == -1.0  # a view, not a copy
    bias, bias_views = join_rows([torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])], interleave=True)
    assert bias.tolist() == [1.0, 3.0, 2.0, 4.0] and bias_views[1].tolist() == [3.0, 4.0]
    # group-major [N, G] (stride (1, N)): the join is group-major too
    s, t = a.t().contiguous().t(), b.t().contiguous().t()
    for interleave in (False, True):
        joined, views = join_rows([s, t], interleave, group_major=True)
        assert joined.stride() == (1, 8) and all(torch.equal(v, u) for v, u in zip(views, (s, t), strict=True))
        assert torch.equal(joined[0::2] if interleave else joined[:4], s)
    for bad in ([a, b, a], [a, c]):
        with pytest.raises(ValueError, match="interleaving takes two tensors of one shape"):
            join_rows(bad, interleave=True)
