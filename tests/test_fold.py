"""QBENCH_LEAN_FOLD (qbench/runtimes/lean.py, qbench/runtimes/kernels/gemv.py): lean's norms, residual
adds and SiLU products inside its 16-bit GEMV. The kernel's three forms under Triton's interpreter
against the same arithmetic in float64 and against the model's own modules; lean's folded step
against its plain one and against transformers; where it is not taken, the notes say why."""

from textwrap import dedent

import pytest
import torch
from conftest import INT4_TINY_LEAN, run_interpreted, tiny_model

pytest.importorskip("triton", reason="Triton not installed (the test extra installs it on Linux x86-64)")


def test_the_folded_gemvs_compute_the_norm_scale_the_silu_pairs_the_residual_and_the_next_scale():
    """Both GEMVs that fold (lean's 16-bit one; qbench-int4's, split and unsplit), float32 (no rounding
    between the steps, so the arithmetic alone is compared, to 1e-5) on ragged shapes with and without
    bias; then bf16 against the modules (Qwen2's RMSNorm, SiLU, the add) as the model runs them,
    within its roundings. Dropping the RMS scale, swapping gate and up, or leaving out the residual
    or the next norm's weight is far outside either. A split call leaves its workspace (the sums, the
    squares of h its programs add for the RMS scale, the counters) zero: the next call is the same."""
    out = run_interpreted(
        """
        import torch
        from torch.nn.functional import linear, silu
        from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm
        from qbench.runtimes.kernels import gemv, gemv_int4 as G
        torch.manual_seed(0)

        def err(got, want):
            return ((got.double() - want.double()).norm() / want.double().norm()).item()

        def launches(n, k, dtype, with_bias):
            # (name, call(x, **fold), the weight it multiplies by in float64, bias)
            b = torch.randn(n, dtype=dtype) if with_bias else None
            w = (torch.randn(n, k) / 8).to(dtype)
            yield "gemv", (lambda x, **f: gemv.gemv(x, w, b, 8, 128, 4, **f)), w.double(), b
            g = 64
            q = torch.randint(0, 16, (n, k))
            zeros = torch.randint(0, 17, (n, k // g), dtype=torch.uint8)
            scales = (torch.rand(n, k // g) * 0.02 + 0.001).to(torch.float16)
            qweight, s, z = G.pack(q, g), G.group_major(scales), G.group_major(zeros)
            for split in (1, 3):
                yield (f"int4 split {split}", (lambda x, split=split, **f: G.gemv_int4(
                    x, qweight, s, z, b, g, 16, 1, split, 4, **f)), G.dequantize(qweight, scales, zeros, g).double(), b)

        eps = 1e-6
        for n, k, with_bias in [(64, 256, True), (38, 384, False)]:
            for name, call, w, b in launches(n, k, torch.float32, with_bias):
                bias = None if b is None else b.double()
                h, weight = torch.randn(k) * 3, torch.randn(k)
                x = h * weight  # the norm's input times its weight: what scale_out hands the next GEMV
                scale = torch.rsqrt(h.double().pow(2).mean() + eps)
                want = linear(x.double(), w) * scale + (0 if bias is None else bias)
                for _ in range(2):  # a split call leaves its sums and squares' slots zero for the next
                    assert err(call(x, rms=h, eps=eps), want) < 1e-5, (name, n, k)
                assert err(call(x), want) > 0.05, name  # the scale matters
                plain = linear(x.double(), w, bias)
                pairs = plain.view(-1, 2)
                want = silu(pairs[:, 0]) * pairs[:, 1]
                assert err(call(x, silu=True), want) < 1e-5, (name, n, k)
                assert err(call(x, silu=True), silu(pairs[:, 1]) * pairs[:, 0]) > 0.05, name
                residual, following = torch.randn(n), torch.randn(n)
                total = residual.double() + plain
                got = call(x, residual=residual, scale_out=following)
                assert got.shape == (2 * n,) and err(got[:n], total) < 1e-5, (name, n, k)
                assert err(got[n:], total * following.double()) < 1e-5, (name, n, k)
                assert err(got[:n], plain) > 0.05 and err(got[n:], total) > 0.05, name
                assert err(call(x, residual=residual), total) < 1e-5, (name, n, k)
        # the split calls' workspaces (sums, the RMS fold's squares, counters): all zero between calls
        assert G._workspaces and all(not t.any() for kept in G._workspaces.values() for t in kept)

        # bf16, as the model computes it (each step rounded to bf16); the interpreter truncates where a
        # GPU rounds, and the fold keeps the normalised h in float32 where the module rounds it
        n, k = 96, 512
        norm = Qwen2RMSNorm(k, eps=eps).to(torch.bfloat16)
        norm.weight.data = torch.randn(k, dtype=torch.bfloat16)
        hidden = torch.randn(k, dtype=torch.bfloat16) * 3
        scaled = (hidden.float() * norm.weight.detach().float()).to(torch.bfloat16)
        for name, call, w, b in launches(n, k, torch.bfloat16, False):
            w16 = w.to(torch.bfloat16)
            got = call(scaled, rms=hidden, eps=norm.variance_epsilon)
            assert err(got, linear(norm(hidden), w16)) < 2e-2, name
            gate_up = linear(norm(hidden), w16).view(-1, 2)
            assert err(call(scaled, rms=hidden, eps=eps, silu=True), silu(gate_up[:, 0]) * gate_up[:, 1]) < 3e-2, name
            residual = torch.randn(n, dtype=torch.bfloat16)
            got = call(hidden, residual=residual, scale_out=norm.weight[:n])
            total = residual + linear(hidden, w16)
            assert err(got[:n], total) < 2e-2 and err(got[n:], total * norm.weight[:n]) < 2e-2, name
        # as custom ops: schema, fake tensors (what torch.compile traces) and real outputs agree
        w = torch.randn(n, k, dtype=torch.bfloat16)
        for kwargs in ({"rms": hidden, "eps": eps}, {"silu": True}, {"residual": residual, "scale_out": residual}):
            assert set(torch.library.opcheck(gemv.gemv, (scaled, w, None, 8, 128, 4), kwargs).values()) == {"SUCCESS"}
        q = G.pack(torch.randint(0, 16, (n, k)), 128)
        s, z = G.group_major(torch.rand(n, 4).half()), G.group_major(torch.randint(0, 16, (n, 4), dtype=torch.uint8))
        for kwargs in ({"rms": hidden, "eps": eps}, {"silu": True}, {"residual": residual, "scale_out": residual}):
            args = (scaled, q, s, z, None, 128, 16, 1, 2, 4)
            assert set(torch.library.opcheck(G.gemv_int4, args, kwargs).values()) == {"SUCCESS"}
        for bad, why in (({"silu": True, "residual": residual}, "no residual"), ({"rms": residual}, "rms")):
            try:
                gemv.gemv(scaled, w, None, 8, 128, 4, **bad)
            except ValueError as error:
                assert why in str(error), error
            else:
                raise AssertionError(bad)
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_o_and_down_store_the_sums_of_squares_of_h_that_qkv_and_gate_up_take_for_their_rms_scale():
    """qbench-int4's two forms of its own (`gemv_int4.launch`): with `squares` a residual call appends
    one float32 a row block, the sum of squares of the h it stored (float32 and bf16 x, split and
    unsplit, a ragged last block), leaving y and y times g as they were; with `rms_parts` a call takes
    those sums as its RMS scale's input and computes what the call reading h does. A dropped part or
    a block's sum a row short is far outside (bf16's sums are of h as stored, rounded: to 1e-6); misuse is refused; the
    split calls leave their workspaces zero; the op's schema and fake agree with its real outputs."""
    out = run_interpreted(
        """
        import torch
        from qbench.runtimes.kernels import gemv_int4 as G
        torch.manual_seed(0)

        def err(got, want):
            return ((got.double() - want.double()).norm() / want.double().norm()).item()

        n, k, g, block = 70, 384, 64, 16  # 70 rows: four whole row blocks and one of 6
        q = torch.randint(0, 16, (n, k))
        zeros = torch.randint(0, 17, (n, k // g), dtype=torch.uint8)
        scales = (torch.rand(n, k // g) * 0.02 + 0.001).to(torch.float16)
        qweight, s, z = G.pack(q, g), G.group_major(scales), G.group_major(zeros)
        for dtype, split in ((torch.float32, 3), (torch.bfloat16, 1), (torch.bfloat16, 3)):
            x, residual, weight = (torch.randn(size, dtype=dtype) for size in (k, n, n))
            call = lambda x, split=split, **f: G.gemv_int4(x, qweight, s, z, None, g, block, 1, split, 4, **f)
            y = call(x, residual=residual, scale_out=weight, squares=True)
            plain = call(x, residual=residual, scale_out=weight)
            assert y.shape == (2 * n + 5 * 4 // dtype.itemsize,) and torch.equal(y[:2 * n], plain), (dtype, split)
            sums = y[2 * n:].view(torch.float32)
            h = torch.nn.functional.pad(y[:n].double(), (0, 5 * block - n)).view(5, block)
            assert err(sums, h.pow(2).sum(1)) < 1e-6, (dtype, split)
            assert err(sums, h[:, :-1].pow(2).sum(1)) > 1e-3  # one row short of each block
            # the next GEMV: its RMS scale from the sums, as from h itself (h here [k] for its input)
            hk = torch.randn(k, dtype=dtype) * 3
            parts = hk.float().view(6, 64).pow(2).sum(1)
            want = call(x, rms=hk, eps=1e-6)
            assert err(call(x, rms=parts, rms_parts=True, eps=1e-6), want) < 1e-6, (dtype, split)
            assert err(call(x, rms=parts[1:], rms_parts=True, eps=1e-6), want) > 1e-2  # a part dropped
        assert G._workspaces and all(not t.any() for kept in G._workspaces.values() for t in kept)
        x, r = torch.randn(k, dtype=torch.bfloat16), torch.randn(n, dtype=torch.bfloat16)
        for bad, why in (({"squares": True}, "need scale_out"), ({"squares": True, "silu": True}, "need scale_out"),
                         ({"rms": r, "rms_parts": True}, "float32 sums"), ({"rms_parts": True}, "got none")):
            try:
                G.gemv_int4(x, qweight, s, z, None, g, block, 1, 1, 4, **bad)
            except ValueError as error:
                assert why in str(error), error
            else:
                raise AssertionError(bad)
        args = (x, qweight, s, z, None, g, block, 1, 3, 4)
        for kwargs in ({"residual": r, "scale_out": r, "squares": True},
                       {"rms": torch.rand(5), "rms_parts": True, "eps": 1e-6, "silu": True}):
            assert set(torch.library.opcheck(G.gemv_int4, args, kwargs).values()) == {"SUCCESS"}
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_leans_folded_step_computes_what_its_plain_step_and_transformers_do():
    """fp16 tiny model with Qwen2's q, k, v biases: lean with QBENCH_LEAN_FOLD=on (every norm, add and
    SiLU product inside the GEMV) against lean without it and against hf, step by step after a prompt,
    with the split-K attention lean runs on CUDA; the folded step makes no call of the modules' norms."""
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
        for attention in ("split-k",):  # lean's attention on CUDA: the rope and the cache write inside its kernel
            os.environ["QBENCH_LEAN_ATTENTION"] = attention
            runners = {}
            for choice in ("on", "off"):
                os.environ["QBENCH_LEAN_FOLD"] = choice
                runners[choice] = LeanRunner(model, 96, "cpu")
            folded, plain = runners["on"], runners["off"]
            assert folded.fold and not plain.fold
            assert any("QBENCH_LEAN_FOLD=on): folded into the GEMVs" in n for n in folded.notes), folded.notes
            hf = DecoderRunner(model, 96, "cpu")
            for r in (folded, plain, hf):
                r.prefill(tokens[:60])
            for p in range(60, 63):
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


def test_leans_folded_step_with_qbench_int4_computes_what_its_plain_step_and_transformers_do():
    """qbench-int4 (bf16, Qwen2's q, k, v biases) under lean with QBENCH_LEAN_FOLD=on: gate and up
    interleaved in one launch that returns the SiLU product, o and down each a launch of the 4-bit GEMV
    that adds the residual and scales by the next norm's weight (down split in three: the last program
    of a row block finishes) that also stores h's sums of squares, which the next q/k/v and gate/up
    take for their RMS scale, against lean without the fold and against the gate's reference; the
    modules still prefill from their interleaved (strided) tensors."""
    out = run_interpreted(INT4_TINY_LEAN + dedent(
        """
        steps = {}
        for choice in ("on", "off"):
            os.environ["QBENCH_LEAN_FOLD"] = choice
            model = load()
            lean = LeanRunner(model, 96, "cpu")
            assert lean.fold == (choice == "on"), lean.notes
            lean.prefill(tokens[:60])
            steps[choice] = [lean.step(tokens[p : p + 1]).float() for p in range(60, 63)]
            if choice == "on":
                assert any("o and down each alone, folded" in n for n in lean.notes), lean.notes
                assert lean.fold_squares and any("from the sums of squares o and down" in n for n in lean.notes)
                mlp = model.get_decoder().layers[0].mlp
                assert not mlp.gate_proj.qweight.is_contiguous()  # a view of the interleaved launch's rows
                lean.reference(True)
                lean.prefill(tokens[:60])
                steps["reference"] = [lean.step(tokens[p : p + 1]).float() for p in range(60, 63)]
        for got, plain, want in zip(steps["on"], steps["off"], steps["reference"]):
            assert ((got - plain).norm() / plain.norm()).item() < 2e-2 and got.argmax() == plain.argmax()
            assert ((got - want).norm() / want.norm()).item() < 2e-2
        print("ok")
        """
    ))
    assert out.strip() == "ok"


def test_fold_is_checked_and_where_it_is_not_taken_the_notes_say_why(monkeypatch):
    """A bad value is refused; on a backend whose linears no GEMV of lean's folds (torch-int4's), or
    on the CPU without QBENCH_LEAN_GEMV=triton (F.linear), nothing is folded and the notes say so."""
    from qbench.runtimes.lean import LeanRunner

    model = tiny_model("bf16")
    monkeypatch.setenv("QBENCH_LEAN_FOLD", "yes")
    with pytest.raises(ValueError, match="QBENCH_LEAN_FOLD must be off or on"):
        LeanRunner(model, 32, "cpu")
    monkeypatch.setenv("QBENCH_LEAN_FOLD", "on")
    runner = LeanRunner(model, 32, "cpu")  # the CPU: F.linear, no GEMV to fold into
    assert not runner.fold and runner._step_fn == runner._decode
    assert any("QBENCH_LEAN_FOLD=on): not folded (the linear layers are not all lean's own GEMVs that fold" in n
               for n in runner.notes), runner.notes
    monkeypatch.setenv("QBENCH_LEAN_GEMV", "triton")
    runner = LeanRunner(tiny_model("torch-int4"), 32, "cpu")
    assert not runner.fold and any("not folded" in n for n in runner.notes), runner.notes
    monkeypatch.delenv("QBENCH_LEAN_FOLD")
    runner = LeanRunner(model, 32, "cpu")
    assert not runner.fold and not any("QBENCH_LEAN_FOLD" in n for n in runner.notes)


def test_the_folded_kernels_compile_for_an_h100():
    """The interpreter runs what the compiler may refuse (the SiLU pairs' reshape and split, the split-K
    epilogue's runtime branch): both GEMVs with every fold form, compiled for sm_90 here, no GPU."""
    from conftest import FOLD_FORMS, int4_ptx, ptx_for_sm90

    from qbench.runtimes.kernels import gemv

    for form in FOLD_FORMS:
        fixed = {"HAS_BIAS": True, "BLOCK_N": 8, "BLOCK_K": 512, "EVEN_K": True, "PDL": False} | form
        ptx = ptx_for_sm90(gemv._kernel(), gemv.SIGNATURE, fixed)
        if ptx is not None:
            assert ("ex2" in ptx) == form["SILU"]  # the SiLU's exp is there only where asked
        # qbench-int4's own: the RMS from the sums of squares the GEMV before stored, and storing them
        own = {"PARTS": 128} if form["RMS"] else {"SQUARES": True}
        for split_k, extra in ((True, {}), (False, {}), (True, own), (False, own)):
            constants = {"GROUP": 128, "GROUPS": 2, "HAS_BIAS": True, "SPLIT_K": split_k, "BLOCK_N": 32,
                         "BF16X2": True, "PDL": False, "SN": 1} | form | extra
            ptx = int4_ptx(constants)
            if ptx is not None:
                assert ("ex2" in ptx) == form["SILU"]


def test_the_folded_step_compiles_on_a_gpu_with_qbench_int4_as_with_bf16(monkeypatch):
    """On an H100 torch.compile of the folded qbench-int4 step did not return within minutes until lean
    registered its ops with inductor first (results/h100/step6/); since, it compiled there (step7/), so
    lean compiles that step as it compiles bf16's, with the same note. The choice alone, as on a GPU
    (on the CPU nothing compiles)."""
    from qbench.runtimes.lean import LeanRunner

    monkeypatch.setenv("QBENCH_LEAN_GEMV", "triton")
    monkeypatch.setenv("QBENCH_LEAN_FOLD", "on")
    for backend in ("qbench-int4", "bf16"):
        runner = LeanRunner(tiny_model(backend), 32, "cpu")
        assert runner.fold and runner._step_fn == runner._uncompiled
        runner.device = torch.device("cuda")  # nothing is launched
        runner.notes.clear()
        runner._choose_compile(compile_step=True)
        assert runner._step_fn != runner._uncompiled, backend
        assert runner.notes == ["lean: step compiled with torch.compile"], (backend, runner.notes)


def test_a_compile_prints_no_call_of_qbench_ops_so_the_folded_int4_step_compiles_as_it_runs_eagerly():
    """torch 2.11 formats the first call of each custom op in a compiled graph for a log line, log on
    or off; in the folded qbench-int4 step that call (lean's 16-bit GEMV at lm_head) prints every
    layer's nodes, growing several-fold with each, and on the H100 the compile did not return
    (results/h100/step6/). lean registers its ops with inductor first (`lower_qbench_ops_as_fallbacks`).
    Here inductor's INFO log is on, so torch 2.13, which formats the line only for the log, would
    print it too: compiling the folded step (tiny spec, on the CPU, torch's compile caches off) prints
    no call, and its logits are the eager step's. Without the registration each qbench op the step
    calls is printed once (lm_head's call: 0.48 M characters at one layer, 8.5 M at three, here)."""
    out = run_interpreted(INT4_TINY_LEAN + dedent(
        """
        import logging
        from torch._inductor import exc
        from qbench.runtimes import lean as lean_module
        printed = []
        original = exc.OperatorIssue.operator_str

        def counted(target, args, kwargs):
            printed.append(str(target))
            return original(target, args, kwargs)

        exc.OperatorIssue.operator_str = staticmethod(counted)
        torch._logging.set_logs(inductor=logging.INFO)
        torch._inductor.config.fx_graph_cache = False  # a cached graph is not lowered again: nothing to print
        torch._functorch.config.enable_autograd_cache = False
        os.environ["QBENCH_LEAN_FOLD"] = "on"
        lean = LeanRunner(load(), 96, "cpu")
        assert lean.fold, lean.notes
        lean.prefill(tokens[:60])
        eager = lean.step(tokens[60:61]).float()
        lean.next_position = 60
        lean.step(tokens[60:61])  # the step's token and position buffers, as a compiled step reads them
        compiled = lean_module.compile_keyed(lean._uncompiled)(lean.token, lean.position).float()
        assert ((compiled - eager).norm() / eager.norm()).item() < 1e-2 and compiled.argmax() == eager.argmax()
        assert not printed, printed
        print("ok")
        """
    ))
    assert out.strip().endswith("ok")
