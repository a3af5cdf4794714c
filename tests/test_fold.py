"""QBENCH_LEAN_FOLD (qbench/runtimes/lean.py, qbench/runtimes/kernels/gemv.py): lean's norms, residual
adds and SiLU products inside its 16-bit GEMV. The kernel's three forms under Triton's interpreter
against the same arithmetic in float64 and against the model's own modules; lean's folded step
against its plain one and against transformers; where it is not taken, the notes say why."""

import pytest
from conftest import run_interpreted, tiny_model

pytest.importorskip("triton", reason="Triton not installed (the test extra installs it on Linux x86-64)")


def test_the_folded_gemv_computes_the_norm_the_silu_product_and_the_residual_add():
    """Float32 (no rounding between the steps, so the arithmetic alone is compared, to 1e-5) on ragged
    shapes with and without bias; then bf16 against the modules (Qwen2's RMSNorm, SiLU, the add) as
    the model runs them, within its roundings. Dropping the RMS scale, the norm's weight, the SiLU or
    the residual is far outside either."""
    out = run_interpreted(
        """
        import torch
        from torch.nn.functional import linear, silu
        from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm
        from qbench.runtimes.kernels import gemv
        torch.manual_seed(0)

        def err(got, want):
            return ((got.double() - want.double()).norm() / want.double().norm()).item()

        eps = 1e-6
        cases = [(64, 256, (8, 128, 4), True), (37, 300, (4, 128, 4), False), (130, 1000, (8, 256, 4), True)]
        for n, k, blocks, with_bias in cases:
            w, x, g = torch.randn(n, k), torch.randn(k) * 3, torch.randn(k)
            b = torch.randn(n) if with_bias else None
            x64 = x.double()
            normed = x64 * g.double() * torch.rsqrt(x64.pow(2).mean() + eps)
            want = linear(normed, w.double(), None if b is None else b.double())
            assert err(gemv.gemv(x, w, b, *blocks, norm=g, eps=eps), want) < 1e-5, (n, k)
            gate_up, residual = torch.randn(2 * k) * 3, torch.randn(n)
            gate, up = gate_up.double().split(k)
            want = residual.double() + linear(silu(gate) * up, w.double(), None if b is None else b.double())
            assert err(gemv.gemv(gate_up, w, b, *blocks, residual=residual, silu=True), want) < 1e-5, (n, k)
            got = gemv.gemv(x, w, b, *blocks, residual=residual)
            assert err(got, residual.double() + linear(x64, w.double(), None if b is None else b.double())) < 1e-5

        # bf16, as the model computes it (each step rounded to bf16); the interpreter truncates where a
        # GPU rounds, and the fold keeps the normalised x in float32 where the module rounds it
        n, k, blocks = 96, 512, (8, 128, 4)
        norm = Qwen2RMSNorm(k, eps=eps).to(torch.bfloat16)
        norm.weight.data = torch.randn(k, dtype=torch.bfloat16)
        w = torch.randn(n, k, dtype=torch.bfloat16) / 16
        hidden = torch.randn(k, dtype=torch.bfloat16) * 3
        got = gemv.gemv(hidden, w, None, *blocks, norm=norm.weight, eps=norm.variance_epsilon)
        assert err(got, linear(norm(hidden), w)) < 2e-2
        gate_up, residual = torch.randn(2 * k, dtype=torch.bfloat16) * 3, torch.randn(n, dtype=torch.bfloat16)
        gate, up = gate_up.split(k)
        got = gemv.gemv(gate_up, w, None, *blocks, residual=residual, silu=True)
        assert err(got, residual + linear(silu(gate) * up, w)) < 2e-2
        # as a custom op: schema, fake tensors (what torch.compile traces) and real outputs agree
        for args, kwargs in (((hidden, w, None, *blocks), {"norm": norm.weight.detach(), "eps": eps}),
                             ((gate_up, w, None, *blocks), {"residual": residual, "silu": True})):
            assert set(torch.library.opcheck(gemv.gemv, args, kwargs).values()) == {"SUCCESS"}
        try:
            gemv.gemv(hidden, w, None, *blocks, silu=True)
        except ValueError as error:
            assert "x of 1024 elements" in str(error)
        else:
            raise AssertionError("a SiLU input of K elements was taken")
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_leans_folded_step_computes_what_its_plain_step_and_transformers_do():
    """fp16 tiny model with Qwen2's q, k, v biases: lean with QBENCH_LEAN_FOLD=on (every norm, add and
    SiLU product inside the GEMV) against lean without it and against hf, step by step after a prompt;
    the folded step makes no call of the modules' norms."""
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
        torch.manual_seed(1)
        for layer in model.get_decoder().layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias = torch.nn.Parameter(torch.randn(proj.out_features, dtype=torch.float16) * 0.1)
        os.environ["QBENCH_LEAN_GEMV"] = "triton"
        norms = []
        for layer in model.get_decoder().layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.register_forward_hook(lambda *args: norms.append(1))
        tokens = token_stream(spec.vocab_size, 72, 0, "cpu")
        for attention in ("sdpa", "split-k"):  # split-k: the rope and the cache write inside its kernel
            os.environ["QBENCH_LEAN_ATTENTION"] = attention
            runners = {}
            for choice in ("on", "off"):
                os.environ["QBENCH_LEAN_FOLD"] = choice
                runners[choice] = LeanRunner(model, 96, "cpu")
            folded, plain = runners["on"], runners["off"]
            assert folded.fold and not plain.fold
            assert any("QBENCH_LEAN_FOLD=on): folded into the 16-bit GEMV" in n for n in folded.notes), folded.notes
            hf = DecoderRunner(model, 96, "cpu")
            for r in (folded, plain, hf):
                r.prefill(tokens[:60])
            for p in range(60, 64):
                t = tokens[p : p + 1]
                norms.clear()
                got = folded.step(t).float()
                assert not norms, p
                want, ref = plain.step(t).float(), hf.step(t).float()
                assert ((got - want).norm() / want.norm()).item() < 1e-2 and got.argmax() == want.argmax(), p
                assert ((got - ref).norm() / ref.norm()).item() < 1e-2, p
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_fold_is_checked_and_where_it_is_not_taken_the_notes_say_why(monkeypatch):
    """A bad value is refused; on a backend whose linears are not lean's 16-bit GEMV (qbench-int4), or
    with torch's linears (QBENCH_LEAN_GEMV=cublas), nothing is folded and the notes say so."""
    from qbench.runtimes.lean import LeanRunner

    model = tiny_model("bf16")
    monkeypatch.setenv("QBENCH_LEAN_FOLD", "yes")
    with pytest.raises(ValueError, match="QBENCH_LEAN_FOLD must be off or on"):
        LeanRunner(model, 32, "cpu")
    monkeypatch.setenv("QBENCH_LEAN_FOLD", "on")
    runner = LeanRunner(model, 32, "cpu")  # the CPU: F.linear, no GEMV to fold into
    assert not runner.fold and runner._step_fn == runner._decode
    assert any("QBENCH_LEAN_FOLD=on): not folded (the linear layers are not all lean's 16-bit GEMV" in n
               for n in runner.notes), runner.notes
    monkeypatch.setenv("QBENCH_LEAN_GEMV", "triton")
    runner = LeanRunner(tiny_model("qbench-int4"), 32, "cpu")
    assert not runner.fold and any("not folded" in n for n in runner.notes), runner.notes
    monkeypatch.delenv("QBENCH_LEAN_FOLD")
    runner = LeanRunner(model, 32, "cpu")
    assert not runner.fold and not any("QBENCH_LEAN_FOLD" in n for n in runner.notes)
