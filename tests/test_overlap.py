"""Programmatic dependent launch (qbench/runtimes/kernels/overlap.py): every kernel of lean's that may
start before the kernel ahead of it has finished waits for it before it reads or writes anything the
step writes; lean passes the launch to every one of its own kernels when asked, and to none otherwise.
No GPU here: the kernels are compiled for sm_90 and their PTX read; the step runs on recording fakes."""

from __future__ import annotations

import functools
import re

import pytest
import torch
from conftest import FOLD_FORMS, decode_attention_ptx, int4_ptx, ptx_for_sm90, tiny_model

from qbench.runtimes.kernels import decode_attention, elementwise, gemv

MEMORY = re.compile(r"\b(ld\.global|st\.global|atom\.|red\.)")


def _before_the_wait(ptx: str) -> list[str]:
    """The PTX lines ahead of the kernel's `griddepcontrol.wait` (asserting there is exactly one)."""
    lines = ptx.splitlines()
    waits = [i for i, line in enumerate(lines) if "griddepcontrol.wait" in line]
    assert len(waits) == 1, waits
    assert any("griddepcontrol.launch_dependents" in line for line in lines[: waits[0]])
    return lines[: waits[0]]


def _gemv_ptx(pdl: bool, form: int | None = None) -> str | None:
    """`form`: with QBENCH_LEAN_FOLD's FOLD_FORMS[form]."""
    constants = {"HAS_BIAS": True, "BLOCK_N": 8, "BLOCK_K": 512, "EVEN_K": True, "PDL": pdl}
    constants |= FOLD_FORMS[form] if form is not None else dict.fromkeys(FOLD_FORMS[0], False)
    return ptx_for_sm90(gemv._kernel(), gemv.SIGNATURE, constants)


def _int4_ptx(pdl: bool, form: int | None = None) -> str | None:
    constants = {"GROUP": 128, "GROUPS": 4, "HAS_BIAS": True, "SPLIT_K": True, "BLOCK_N": 32, "BF16X2": True,
                 "PDL": pdl, "SN": 1} | (FOLD_FORMS[form] if form is not None else {})
    return int4_ptx(constants)


def _elementwise_ptx(kernel: str, pdl: bool) -> str | None:
    if kernel == "add_rmsnorm":
        signature = {"H": "*bf16", "D": "*bf16", "W": "*bf16", "OUT_H": "*bf16", "OUT_X": "*bf16", "N": "i32",
                     "eps": "fp32", "HAS_DELTA": "constexpr", "BLOCK": "constexpr", "PDL": "constexpr"}
        constants = {"HAS_DELTA": True, "BLOCK": 4096, "PDL": pdl}
    else:
        signature = {"GU": "*bf16", "OUT": "*bf16", "SIZE": "i32", "BLOCK": "constexpr", "PDL": "constexpr"}
        constants = {"BLOCK": elementwise.SILU_BLOCK, "PDL": pdl}
    return ptx_for_sm90(elementwise._kernels()[kernel == "silu_mul"], signature, constants)


KERNELS = {  # name: (PTX of it with or without PDL, loads allowed before the wait)
    "gemv": (_gemv_ptx, 0),
    "gemv (folded: RMS scale, SiLU product)": (functools.partial(_gemv_ptx, form=0), 0),
    "gemv (folded: residual, next norm's weight)": (functools.partial(_gemv_ptx, form=1), 0),
    "gemv_int4 (split-K, bf16x2, bias)": (_int4_ptx, 0),
    "gemv_int4 (folded: RMS scale, SiLU product)": (functools.partial(_int4_ptx, form=0), 0),
    "gemv_int4 (folded: residual, next norm's weight)": (functools.partial(_int4_ptx, form=1), 0),
    # the partial kernel reads the position before its wait: it aims the prefetch (a hint)
    "attention partial (rope, cache write)": (
        lambda pdl: decode_attention_ptx("partial", rope=True, pdl=pdl, chunk=96), 1
    ),
    "attention combine": (lambda pdl: decode_attention_ptx("combine", pdl=pdl), 0),
    "add_rmsnorm": (lambda pdl: _elementwise_ptx("add_rmsnorm", pdl), 0),
    "silu_mul": (lambda pdl: _elementwise_ptx("silu_mul", pdl), 0),
}
NOTHING_CONSTANT = ("attention combine", "silu_mul")  # every input is the kernel before's: no prefetch


@pytest.mark.parametrize("name", list(KERNELS))
def test_a_kernel_launched_early_waits_before_it_reads_or_writes_what_the_step_writes(name):
    """Before `griddepcontrol.wait` a kernel may only ask L2 for constant data (and the attention read
    the position, to aim that): no store, no atomic, no other load. Without PDL none of it is there."""
    ptx_of, loads_allowed = KERNELS[name]
    ptx = ptx_of(True)
    if ptx is None:
        return
    ahead = _before_the_wait(ptx)
    memory = [line for line in ahead if MEMORY.search(line)]
    assert all("ld.global" in line for line in memory) and len(memory) == loads_allowed, memory
    prefetches = sum("prefetch.global.L2" in line for line in ahead)
    assert (prefetches > 0) == (name not in NOTHING_CONSTANT), prefetches
    plain = ptx_of(False)
    assert "griddepcontrol" not in plain and "prefetch.global" not in plain


def _tiny_lean(monkeypatch, backend: str, pdl: bool, attention: str = "sdpa", linear: str = "triton"):
    from qbench.runtimes.lean import LeanRunner

    model = tiny_model(backend)
    monkeypatch.setenv("QBENCH_LEAN_GEMV", linear)
    monkeypatch.setenv("QBENCH_LEAN_ATTENTION", attention)
    monkeypatch.setattr(LeanRunner, "_choose_pdl", lambda self: pdl)  # a CPU has no PDL: the plan is what is tested
    return model, LeanRunner(model, 32, "cpu")


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("pdl", [False, True])
def test_every_kernel_of_leans_own_in_a_step_gets_the_launch_when_asked_and_none_otherwise(monkeypatch, pdl, fold):
    """The bf16 step with the split-K attention, on recording fakes of the GEMV and the attention: each
    of the layer's launches (q/k/v, attention, o, gate/up, down) and lm_head's says pdl as lean chose;
    folded (QBENCH_LEAN_FOLD=on), the step is those launches alone."""
    monkeypatch.setenv("QBENCH_LEAN_FOLD", "on" if fold else "off")
    model, lean = _tiny_lean(monkeypatch, "bf16", pdl, attention="split-k")
    assert lean.fold == fold
    seen = []

    def fake_gemv(x, weight, bias, block_n, block_k, warps, pdl=False, rms=None, eps=0.0, residual=None,
                  scale_out=None, silu=False):
        seen.append(("gemv", pdl))
        return torch.zeros(gemv.out_size(weight.shape[0], scale_out, silu), dtype=x.dtype)

    def fake_attention(q, k, v, kv_cache, layer, cos, sin, position, scale, programs, planned=0, pdl=False,
                       fused=False):
        seen.append(("attention", pdl))
        return torch.zeros_like(q)

    def fake_add_rmsnorm(hidden, delta, weight, eps, pdl=False):
        seen.append(("add_rmsnorm", pdl))
        return hidden.reshape(-1), hidden.reshape(-1)

    def fake_silu_mul(gate_up, pdl=False):
        seen.append(("silu_mul", pdl))
        return gate_up[: gate_up.numel() // 2]

    monkeypatch.setattr(gemv, "gemv", fake_gemv)
    monkeypatch.setattr(decode_attention, "decode_attention_rope", fake_attention)
    monkeypatch.setattr(elementwise, "add_rmsnorm", fake_add_rmsnorm)
    monkeypatch.setattr(elementwise, "silu_mul", fake_silu_mul)
    with torch.inference_mode():
        lean._uncompiled(torch.zeros(1, 1, dtype=torch.long), torch.tensor([3]))
    layers = len(model.get_decoder().layers)
    # a layer: q/k/v, attention, o, gate/up, down; with PDL (not folded) also its two norms and the SiLU
    # product; then the final norm (with PDL, not folded) and lm_head
    own = pdl and not fold
    assert len(seen) == (layers * 8 + 2 if own else layers * 5 + 1), seen
    assert {flag for _, flag in seen} == {pdl}
    assert lean.own_elementwise == own
    assert fold or not any("QBENCH_LEAN_FOLD" in n for n in lean.notes)
    assert sum("lean's own kernels (add_rmsnorm, silu_mul)" in n for n in lean.notes) == own, lean.notes


def test_qbench_int4_under_pdl_is_refused_with_its_reason_and_planned_as_before_without(monkeypatch):
    """On an H100 qbench-int4's timed block under QBENCH_LEAN_PDL=on did not finish: lean
    refuses it in one line (the cell is unavailable, no 900 s wait for the session's timeout); without
    PDL q, k, v and gate, up are fused launches and o and down go through their modules."""
    from qbench.backends.qbench_int4 import Int4Gemv
    from qbench.errors import BackendUnavailable

    with pytest.raises(BackendUnavailable, match=r"QBENCH_LEAN_PDL=on with lean's 4-bit .*QBENCH_LEAN_PDL=off"):
        _tiny_lean(monkeypatch, "qbench-int4", True)
    model, lean = _tiny_lean(monkeypatch, "qbench-int4", False)
    layers = model.get_decoder().layers
    for layer in layers:
        assert all(lean.linear16.get(id(m)) is None for m in (layer.self_attn.o_proj, layer.mlp.down_proj))
        for first in (layer.self_attn.q_proj, layer.mlp.gate_proj):
            assert isinstance(lean.linear16[id(first)], Int4Gemv) and not lean.linear16[id(first)].pdl
    assert any(f"4-bit linear layers: qbench's int4 GEMV ({2 * len(layers)} launches" in n
               and "o and down through their modules" in n for n in lean.notes), lean.notes


def test_leans_choice_is_checked_and_said(monkeypatch):
    from qbench.runtimes.lean import LeanRunner

    model = tiny_model("bf16")
    monkeypatch.setenv("QBENCH_LEAN_PDL", "yes")
    with pytest.raises(ValueError, match="QBENCH_LEAN_PDL must be off or on"):
        LeanRunner(model, 32, "cpu")
    monkeypatch.setenv("QBENCH_LEAN_PDL", "on")
    runner = LeanRunner(model, 32, "cpu")
    assert not runner.pdl
    assert any("QBENCH_LEAN_PDL=on): not used (it needs a CUDA GPU" in n for n in runner.notes), runner.notes
    monkeypatch.delenv("QBENCH_LEAN_PDL")
    runner = LeanRunner(model, 32, "cpu")
    assert not runner.pdl and not any("QBENCH_LEAN_PDL" in n for n in runner.notes)


def test_lean_with_its_own_norms_computes_the_step_torch_does(monkeypatch):
    """The step's loop with the norms as add_rmsnorm (here its reference in torch, recording): the same
    logits, bit for bit, as the modules' own norms and adds; Gemma-like norms are not taken."""
    from qbench.runtimes.lean import LeanRunner

    model, plain = _tiny_lean(monkeypatch, "bf16", False, linear="cublas")  # torch's linears: the norms are tested
    monkeypatch.setattr(LeanRunner, "_choose_pdl", lambda self: True)
    own = LeanRunner(model, 32, "cpu")
    assert own.own_elementwise and not plain.own_elementwise
    calls = []

    def reference(hidden, delta, weight, eps, pdl=False):
        calls.append(delta is None)
        summed = hidden if delta is None else hidden + delta
        value = summed.float()
        normalised = (value * torch.rsqrt(value.pow(2).mean(-1, keepdim=True) + eps)).to(summed.dtype)
        return summed.reshape(-1), (weight * normalised).reshape(-1)

    monkeypatch.setattr(elementwise, "add_rmsnorm", reference)
    token, position = torch.tensor([[5]]), torch.tensor([0])
    with torch.inference_mode():
        want = plain._decode(token, position)
        got = own._decode(token, position)
    layers = len(model.get_decoder().layers)
    assert calls == [True] + [False] * (2 * layers)  # the first layer's norm alone, then every add and norm
    assert torch.equal(got, want)
    assert not elementwise.own_norm(torch.nn.LayerNorm(8))


def test_the_small_kernels_match_torch():
    """add_rmsnorm and silu_mul under Triton's interpreter against what the modules compute. The
    interpreter truncates float32 to bf16 where a GPU rounds to nearest: a sum truncated, its normalised
    value and the product truncated again, up to about three units in the last place (2^-7 each); a
    wrong mean (over the padded block, say) or a lost weight or residual is far outside that."""
    from conftest import run_interpreted

    out = run_interpreted(
        """
        import torch
        from qbench.runtimes.kernels import elementwise
        from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm
        torch.manual_seed(0)
        for n in (256, 3584, 300):
            norm = Qwen2RMSNorm(n, eps=1e-6).to(torch.bfloat16)
            norm.weight.data = torch.randn(n, dtype=torch.bfloat16)
            assert elementwise.own_norm(norm)
            hidden, delta = torch.randn(n, dtype=torch.bfloat16) * 3, torch.randn(n, dtype=torch.bfloat16)
            for d in (delta, None):
                summed, x = elementwise.add_rmsnorm(hidden, d, norm.weight, norm.variance_epsilon)
                want_sum = hidden if d is None else hidden + d
                torch.testing.assert_close(summed, want_sum, atol=0, rtol=2**-7)
                torch.testing.assert_close(x, norm(want_sum), atol=1e-6, rtol=2**-5)
        gate_up = torch.randn(2 * 1500, dtype=torch.bfloat16) * 4
        got = elementwise.silu_mul(gate_up)
        gate, up = gate_up.split(1500)
        torch.testing.assert_close(got, torch.nn.functional.silu(gate) * up, atol=1e-6, rtol=2**-5)
        # as custom ops: schema, fake tensors (what torch.compile traces) and real outputs agree
        weight = torch.randn(300, dtype=torch.bfloat16)
        for args in ((hidden, delta, weight, 1e-6), (hidden, None, weight, 1e-6)):
            assert set(torch.library.opcheck(elementwise.add_rmsnorm, args).values()) == {"SUCCESS"}
        assert set(torch.library.opcheck(elementwise.silu_mul, (gate_up,)).values()) == {"SUCCESS"}
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_a_triton_without_early_launch_is_said_not_run(monkeypatch):
    """overlap.unavailable(): None with this Triton (its kernels compile above); a Triton without
    griddepcontrol gets its reason, which lean would put in the notes instead of launching."""
    import triton.language.extra.cuda as cuda

    from qbench.runtimes.kernels import overlap

    assert overlap.unavailable() is None
    monkeypatch.delattr(cuda, "gdc_wait")
    assert "no programmatic dependent launch" in overlap.unavailable()
