"""The gemlite backends (fp8-wo, fp8-dyn, int8-wo, gemlite-int4): their quantisers, byte formulas and
availability, on the CPU; the last test runs the kernels where a CUDA GPU and gemlite are present."""

import importlib.util
import json
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from qbench import formats
from qbench.backend import DeviceInfo
from qbench.backends.gemlite_formats import GemliteLinear
from qbench.cli import main
from qbench.registry import BUILT_IN_ORDER, backend_names, load_backend
from qbench.specs import load_model_spec

NAMES = ("fp8-wo", "fp8-dyn", "int8-wo", "gemlite-int4")
# (in_features, out_features): SmolLM2's and Qwen2.5-0.5B's ragged widths (576, 896, 4864), an odd
# output count and a tiny layer
SHAPES = [(576, 1536), (1536, 576), (896, 4864), (4864, 896), (96, 40), (256, 200)]
CPU = DeviceInfo("cpu", "cpu")
H100 = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", (9, 0))
A100 = DeviceInfo("cuda", "NVIDIA A100-SXM4-80GB", (8, 0))


def _weight(in_features, out_features, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(out_features, in_features, generator=generator) * 0.02


def _nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


# ---- the quantisers ------------------------------------------------------------------------------


def test_fp8_round_trip_within_e4m3_precision():
    weight = _weight(512, 64)
    weight[3] = 0  # a zero row: scale 1, all zeros back
    q, scales = formats.fp8_quantize(weight)
    assert q.dtype == torch.float8_e4m3fn and q.shape == weight.shape
    assert scales.dtype == torch.float32 and scales.shape == (64, 1)
    restored = formats.channel_dequantize(q, scales)
    # e4m3 keeps 3 mantissa bits: a normal value is off by at most 2^-4 of itself; below e4m3's
    # smallest normal (2^-6) the subnormal spacing 2^-9 bounds it (half of it, times the scale)
    bound = torch.maximum(weight.abs() * 2**-4, scales * 2**-10)
    assert ((restored - weight).abs() <= bound + 1e-12).all()
    row_max = weight.abs().amax(dim=1)
    # each row's largest weight is q = 448 exactly: back to itself within float32 rounding of the scale
    assert torch.allclose(restored.abs().amax(dim=1), row_max, rtol=1e-6, atol=0)
    assert (q.float().abs().amax(dim=1)[row_max > 0] == 448).all()
    assert not restored[3].any() and scales[3].item() == 1.0


def test_fp8_values_on_its_grid_come_back_exactly():
    grid = torch.tensor([448.0, -448.0, 1.0, -0.5, 0.015625, 0.001953125, 0.0, 240.0, -13.0, 3.5])
    scale = 2.0**-12
    weight = (grid * scale).repeat(4, 1)
    q, scales = formats.fp8_quantize(weight)
    assert torch.equal(scales, torch.full((4, 1), scale))
    assert torch.equal(formats.channel_dequantize(q, scales), weight)


def test_int8_symmetric_exact_on_constructed_values():
    generator = torch.Generator().manual_seed(1)
    q = torch.randint(-127, 128, (16, 256), generator=generator, dtype=torch.int8)
    q[:, 0], q[::2, 1] = 127, -127  # every row reaches +127: its scale is max|w| / 127
    scales = 2.0 ** -torch.randint(6, 12, (16, 1), generator=generator).float()
    weight = q.float() * scales
    got_q, got_scales = formats.int8_quantize(weight)
    assert got_q.dtype == torch.int8 and torch.equal(got_q, q) and torch.equal(got_scales, scales)
    assert torch.equal(formats.channel_dequantize(got_q, got_scales), weight)


def test_int8_round_trip_within_half_a_step():
    weight = _weight(384, 48)
    q, scales = formats.int8_quantize(weight)
    assert int(q.abs().max()) == 127 and int(q.min()) >= -127
    assert ((formats.channel_dequantize(q, scales) - weight).abs() <= scales / 2 + 1e-9).all()


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_with_zeros_exact_on_constructed_values(group_size):
    out_features, in_features = 24, 256
    generator = torch.Generator().manual_seed(group_size)
    groups = in_features // group_size
    q = torch.randint(0, 16, (out_features, in_features), generator=generator, dtype=torch.uint8)
    q[:, ::group_size], q[:, 1::group_size] = 0, 15  # every group spans the full 0..15
    zeros = torch.randint(0, 16, (out_features, groups), generator=generator).float()
    scales = 2.0 ** -torch.randint(4, 10, (out_features, groups), generator=generator).float()
    expand = lambda t: t.repeat_interleave(group_size, dim=1)  # noqa: E731
    weight = (q.float() - expand(zeros)) * expand(scales)
    got_q, got_scales, got_zeros = formats.gemlite_int4_quantize(weight, group_size)
    assert got_scales.dtype == got_zeros.dtype == torch.bfloat16 and got_scales.shape == (out_features, groups)
    assert torch.equal(got_q, q) and torch.equal(got_zeros.float(), zeros) and torch.equal(got_scales.float(), scales)
    assert torch.equal(formats.gemlite_int4_dequantize(got_q, got_scales, got_zeros, group_size), weight)
    # gemlite keeps -zeros * scales (bf16) in place of the zeros: exact here
    assert torch.equal(formats.gemlite_int4_shift(got_scales, got_zeros).float(), -zeros * scales)


def test_int4_round_trip_within_a_step():
    weight = _weight(512, 32)
    q, scales, zeros = formats.gemlite_int4_quantize(weight, 128)
    restored = formats.gemlite_int4_dequantize(q, scales, zeros, 128)
    step = scales.float().repeat_interleave(128, dim=1)
    assert int(q.max()) <= 15 and ((restored - weight).abs() <= step).all()  # half a step + the zero's rounding
    assert torch.equal(formats.unpack_nibbles(formats.pack_nibbles(q)), q)


def test_fp8_per_token_rounds_each_row_to_e4m3():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, 512, generator=generator)
    x[1] *= 1000  # each row has its own scale
    x[2] = 0
    rounded = formats.fp8_per_token(x)
    assert torch.equal(rounded.abs().amax(dim=-1)[:2], x.abs().amax(dim=-1)[:2])
    assert ((rounded - x).abs() <= x.abs() * 2**-4 + x.abs().amax(dim=-1, keepdim=True) / 448 * 2**-10).all()
    assert not rounded[2].any()
    assert not torch.equal(rounded[:2], x[:2])  # it does round


# ---- bytes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_features,out_features", SHAPES)
def test_8bit_bytes_formula_against_the_tensors(in_features, out_features):
    weight = _weight(in_features, out_features)
    for quantize in (formats.fp8_quantize, formats.int8_quantize):
        q, scales = quantize(weight)
        assert _nbytes(q, scales) == formats.channel8_bytes(in_features, out_features)
    for name in ("fp8-wo", "fp8-dyn", "int8-wo"):
        backend = load_backend(name)
        assert backend.linear_bytes(in_features, out_features, 128) == in_features * out_features + 4 * out_features


@pytest.mark.parametrize("in_features,out_features", SHAPES)
def test_int4_bytes_formula_against_the_tensors(in_features, out_features):
    backend = load_backend("gemlite-int4")
    for group_size in (32, 64, 128):
        if in_features % group_size:
            continue
        q, scales, zeros = formats.gemlite_int4_quantize(_weight(in_features, out_features), group_size)
        # what gemlite's kernel reads: 4-bit q packed (eight to an int32, K/2 bytes a row), the bf16
        # scales, and the bf16 shifts it keeps in place of the zeros
        stored = _nbytes(formats.pack_nibbles(q), scales, formats.gemlite_int4_shift(scales, zeros))
        assert stored == backend.linear_bytes(in_features, out_features, group_size)


def _stand_in(checkpoint_q, scales, zeros=None):
    """A layer holding its tensors as gemlite does after pack(): W_q transposed, scales [groups, N],
    and an empty zeros tensor where the format has none."""
    empty = torch.tensor([[]], dtype=torch.int32)
    return SimpleNamespace(W_q=checkpoint_q.t(), scales=scales.reshape(scales.shape[0], -1).t(), zeros=empty)


@pytest.mark.parametrize("in_features,out_features", SHAPES)
def test_stored_bytes_count_what_the_kernel_reads(in_features, out_features):
    q, scales = formats.fp8_quantize(_weight(in_features, out_features))
    module = GemliteLinear(_stand_in(q, scales), {"q": q, "scales": scales}, in_features, out_features, None, 128)
    assert module.stored_bytes() == load_backend("fp8-wo").linear_bytes(in_features, out_features, 128)


def test_floor_prints_the_formula_bytes():
    spec = load_model_spec("qwen2.5-7b")
    per_layer = sum(formats.channel8_bytes(k, n) for _, k, n, _ in spec.linear_shapes())
    for name in ("fp8-wo", "int8-wo"):
        result = CliRunner().invoke(main, ["floor", "--model", "qwen2.5-7b", "--backend", name, "--format", "json"])
        assert result.exit_code == 0, result.output
        row = json.loads(result.stdout)[0]
        assert row["linear_weights"] == per_layer * spec.num_layers == 6_530_850_816  # 196 linears at ~1 byte
    args = ["floor", "--model", "qwen2.5-7b", "--backend", "gemlite-int4", "--format", "json"]
    result = CliRunner().invoke(main, args)
    assert json.loads(result.stdout)[0]["linear_weights"] == 3_466_559_488  # as torch-int4's g128: same bytes


# ---- the reference the gate compares with ---------------------------------------------------------


def test_fp8_dyn_reference_rounds_the_tokens_as_its_kernel_does():
    q, scales = formats.fp8_quantize(_weight(256, 64))
    bias = torch.randn(64)
    module = GemliteLinear(_stand_in(q, scales), {"q": q, "scales": scales}, 256, 64, bias, 256)
    module.format, module.reference = "channel", True
    x = torch.randn(2, 256)
    weight = formats.channel_dequantize(q, scales)
    assert torch.equal(module(x), F.linear(x, weight, bias))
    module.dynamic_activations = True
    assert torch.equal(module(x), F.linear(formats.fp8_per_token(x), weight, bias))


# ---- availability and the registry ---------------------------------------------------------------


def test_registered_in_order_and_listed_unavailable_on_cpu_without_importing_gemlite(tmp_path, monkeypatch):
    # a gemlite that records being imported: listing must never import it
    package = tmp_path / "gemlite"
    package.mkdir()
    marker = tmp_path / "imported"
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n__version__ = '0.6.0'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "gemlite", raising=False)
    assert importlib.util.find_spec("gemlite") is not None
    assert [n for n in BUILT_IN_ORDER if n in NAMES] == list(NAMES) and set(NAMES) <= set(backend_names())
    result = CliRunner().invoke(main, ["backends", "--format", "json"], catch_exceptions=False)
    by_name = {row["name"]: row for row in json.loads(result.stdout)}
    for name in NAMES:
        row = by_name[name]
        assert not row["available"] and row["why_not"].startswith("needs a CUDA GPU"), row
        assert row["runtimes"] == "hf,lean" and row["family"] == "gemlite"
    assert not marker.exists() and "gemlite" not in sys.modules


def test_reasons_name_the_machine_before_the_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gemlite" else object())
    for name in NAMES:
        backend = load_backend(name)
        assert backend.unavailable_reason(CPU) == "needs a CUDA GPU (none detected)"
        assert backend.unavailable_reason(H100) == "missing package gemlite: pip install 'qbench-decode[gemlite]'"
    for name in ("fp8-wo", "fp8-dyn"):  # FP8 needs Ada or Hopper: never emulated on an A100
        reason = load_backend(name).unavailable_reason(A100)
        assert reason.startswith("needs compute capability >= 8.9") and "A100" in reason and "8.0" in reason
    for name in ("int8-wo", "gemlite-int4"):
        assert load_backend(name).unavailable_reason(A100).startswith("missing package gemlite")


def test_an_old_gemlite_is_named_with_the_upgrade(monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.5.1.post1")
    assert load_backend("fp8-wo").unavailable_reason(H100) == (
        "gemlite 0.5.1.post1 is installed, fp8-wo needs >= 0.6: pip install -U 'gemlite>=0.6'"
    )
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.6.0.post2")
    assert load_backend("fp8-wo").unavailable_reason(H100) is None


def test_labels_and_shapes_gemlite_cannot_take():
    assert load_backend("fp8-wo").label(128) == "fp8-wo"  # one scale a row: no group size
    assert load_backend("gemlite-int4").label(64) == "gemlite-int4 (g64)"
    spec = SimpleNamespace(name="odd", linear_shapes=lambda: [("q_proj", 100, 64, False), ("o_proj", 64, 100, False)])
    assert "multiples of 32" in load_backend("int8-wo").unsupported_reason(spec, "synthetic")
    assert load_backend("int8-wo").unsupported_reason(load_model_spec("smollm2-135m"), "synthetic") is None


# ---- on a GPU with gemlite ------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("gemlite") is None, reason="needs CUDA and gemlite"
)
@pytest.mark.parametrize("name", NAMES)
def test_kernel_against_its_reference_and_bytes_on_gpu(name):
    backend = load_backend(name)
    from qbench.compare import probe_device

    reason = backend.unavailable_reason(probe_device())
    if reason:
        pytest.skip(reason)
    torch.manual_seed(0)
    for in_features, out_features in [(896, 4864), (4864, 896), (576, 200)]:
        group_size = 64 if in_features % 128 else 128
        linear = torch.nn.Linear(in_features, out_features, bias=True, device="cuda", dtype=torch.bfloat16)
        module = backend.quantize_linear(linear, group_size)
        assert module.stored_bytes() == backend.linear_bytes(in_features, out_features, group_size)
        for rows in (1, 16):
            x = torch.randn(rows, in_features, device="cuda", dtype=torch.bfloat16)
            got = module(x).float()
            module.reference = True
            want = module(x).float()
            module.reference = False
            assert ((got - want).norm() / want.norm()).item() < 0.02
        if name == "gemlite-int4":  # gemlite packed our q: eight values along K to an int32, low first
            packed = module.gemlite.W_q.t().contiguous()  # [N, K/8]
            shifts = torch.arange(0, 32, 4, device="cuda", dtype=torch.int32)
            values = (packed.unsqueeze(-1) >> shifts) & 0xF
            q = formats.unpack_nibbles(module.checkpoint["nibbles"])
            assert torch.equal(values.reshape(out_features, in_features).to(torch.uint8), q)


def test_lean_fuses_the_8bit_layers_into_one_gemlite_launch_a_group():
    """q, k, v (and gate, up) of an 8-bit gemlite backend as one launch of one gemlite layer over
    their concatenated rows, each layer's kernel a view of its rows: on the CPU, through a stand-in for
    gemlite's helper classes (a layer of W_q [K, N] as a view of [N, K], scales [1, N], an empty zeros
    and F.linear of the dequantised rows), lean's step and prompt against the plain path."""
    pytest.importorskip("triton", reason="lean's plan needs its Triton GEMV (the interpreter on the CPU)")
    from conftest import run_interpreted

    out = run_interpreted(
        """
        import os, sys, types, torch
        import torch.nn.functional as F

        class FakeLayer(torch.nn.Module):  # gemlite's layers are modules: GemliteLinear holds one as a child
            built = []
            def __init__(self, q, scales):
                super().__init__()
                self.W_q, self.scales = q.t(), scales.float().view(-1, 1).t().contiguous()  # views, as gemlite's
                self.zeros = torch.tensor([[]], dtype=torch.int32)
                FakeLayer.built.append(q.shape[0])
            def forward(self, x):
                return F.linear(x, (self.W_q.t().float() * self.scales.t()).to(x.dtype))

        class FakeHelper:
            def __init__(self, device=None, dtype=None):
                pass
            def from_weights(self, weight, bias=None, scales=None):
                return FakeLayer(weight, scales)

        helper = types.ModuleType("gemlite.helper")
        helper.A16W8_FP8 = helper.A16W8_INT8 = helper.A8W8_fp8_dynamic = FakeHelper
        gemlite = types.ModuleType("gemlite")
        gemlite.helper = helper
        sys.modules.update({"gemlite": gemlite, "gemlite.helper": helper})

        from qbench.api import LoadOptions
        from qbench.backends.gemlite_formats import GemliteRows
        from qbench.registry import load_backend
        from qbench.runtimes.lean import LeanRunner
        from qbench.session.decode import token_stream
        from qbench.specs import load_model_spec

        spec = load_model_spec("tiny")
        options = LoadOptions(device="cpu", weights="synthetic", seed=0, max_cache_len=96, group_size=128)
        model = load_backend("bf16").load(spec, options).model
        backend = load_backend("int8-wo")
        torch.manual_seed(1)
        names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        for layer in model.get_decoder().layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias = torch.nn.Parameter(torch.randn(proj.out_features, dtype=torch.bfloat16) * 0.1)
            for name in names:
                parent = layer.self_attn if hasattr(layer.self_attn, name) else layer.mlp
                setattr(parent, name, backend.quantize_linear(getattr(parent, name), 128))
        own = len(FakeLayer.built)
        os.environ.update(QBENCH_LEAN_GEMV="triton", QBENCH_LEAN_ATTENTION="sdpa")
        lean = LeanRunner(model, 96, "cpu")
        layers = model.get_decoder().layers
        assert any("gemlite's GEMV over concatenated rows (%d launches" % (2 * len(layers)) in n
                   for n in lean.notes), lean.notes
        attention, mlp = layers[0].self_attn, layers[0].mlp
        rows = [m.out_features for m in (attention.q_proj, attention.k_proj, attention.v_proj)]
        assert FakeLayer.built[own:own + 2] == [sum(rows), mlp.gate_proj.out_features + mlp.up_proj.out_features]
        for proj in (attention.q_proj, attention.v_proj, mlp.up_proj):
            assert isinstance(proj.gemlite, GemliteRows)
        assert not isinstance(attention.o_proj.gemlite, GemliteRows)  # o and down: their own launches
        base = attention.q_proj.gemlite.W_q.untyped_storage().data_ptr()
        assert attention.v_proj.gemlite.W_q.untyped_storage().data_ptr() == base  # views into one layer
        for proj in (attention.q_proj, attention.k_proj):  # the gate's copy too: the layer's own storage is gone
            assert proj.checkpoint["q"].untyped_storage().data_ptr() == base
        assert torch.equal(attention.k_proj.checkpoint["q"].float(), attention.k_proj.gemlite.W_q.t().float())
        for _, module in lean.quant_layers():  # each layer's bytes still its own formula
            assert module.stored_bytes() == backend.linear_bytes(module.in_features, module.out_features, 128)
        tokens = token_stream(spec.vocab_size, 72, 0, "cpu")
        got = [lean.prefill(tokens[:60]).float()] + [lean.step(tokens[p : p + 1]).float() for p in range(60, 62)]
        lean.reference(True)  # the plain path: the checkpoint's int8 rows dequantised, F.linear
        want = [lean.prefill(tokens[:60]).float()] + [lean.step(tokens[p : p + 1]).float() for p in range(60, 62)]
        for a, b in zip(got, want):
            assert ((a - b).norm() / b.norm()).item() < 2e-2 and a.argmax() == b.argmax()
        # a layer alone (the gate's layer check) runs the fused layer and keeps its rows
        x = torch.randn(3, attention.k_proj.in_features, dtype=torch.bfloat16)
        alone = F.linear(x.float(), attention.k_proj.dequantize(), attention.k_proj.bias.float())
        assert torch.allclose(attention.k_proj.kernel_forward(x).float(), alone, rtol=2e-2, atol=2e-2)
        print("ok")
        """
    )
    assert out.strip() == "ok"
