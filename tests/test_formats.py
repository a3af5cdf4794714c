"""Pack/unpack round trips of each 4-bit format against a reference dequantiser."""

import importlib.util

import pytest
import torch

from qbench import formats


@pytest.fixture
def weight():
    torch.manual_seed(0)
    return torch.randn(256, 512) * 0.02


def _max_step(weight, group_size):
    grouped = weight.reshape(weight.shape[0], -1, group_size)
    return ((grouped.amax(-1) - grouped.amin(-1)) / 15).max().item()


@pytest.mark.parametrize("name", ["awq", "gptq"])
def test_round_trip_within_one_step(weight, name):
    tensors = getattr(formats, f"{name}_quantize")(weight, 128)
    restored = getattr(formats, f"{name}_dequantize")(tensors, 128)
    # GPTQ (symmetric): step 2*max|w|/15, error <= half a step. AWQ (asymmetric): step (max-min)/15,
    # and rounding the zero point to an integer adds up to another half step.
    if name == "gptq":
        bound = weight.abs().max().item() / 15
    else:
        bound = _max_step(weight, 128)
    assert (restored - weight).abs().max().item() <= bound + 1e-6


def test_awq_layout_and_nibble_order():
    weight = torch.zeros(8, 128)
    tensors = formats.awq_quantize(weight, 128)
    assert tensors["qweight"].shape == (128, 1) and tensors["qweight"].dtype == torch.int32
    assert tensors["qzeros"].shape == (1, 1) and tensors["scales"].shape == (1, 8)
    # Columns 0..7 holding values 0..7 pack in AWQ's interleaved order 0,2,4,6,1,3,5,7.
    packed = formats.pack_columns(torch.arange(8).reshape(1, 8), formats.AWQ_ORDER)
    nibbles = [(int(packed) >> (4 * i)) & 0xF for i in range(8)]
    assert nibbles == [0, 2, 4, 6, 1, 3, 5, 7]
    assert torch.equal(formats.unpack_columns(packed, formats.AWQ_ORDER), torch.arange(8).reshape(1, 8))


def test_gptq_v1_stores_zero_minus_one(weight):
    tensors = formats.gptq_quantize(weight, 128)
    assert tensors["qweight"].shape == (512 // 8, 256)
    assert tensors["g_idx"].tolist() == [i // 128 for i in range(512)]
    # symmetric: every zero point is 8, stored as 7 in every nibble
    assert (tensors["qzeros"] == 0x77777777).all()


def test_packed_sizes_match_the_byte_formulas(weight):
    for name in ("awq", "gptq"):
        tensors = getattr(formats, f"{name}_quantize")(weight, 128)
        stored = sum(t.nbytes for key, t in tensors.items() if key != "g_idx")
        assert stored == getattr(formats, f"{name}_bytes")(512, 256, 128)


def test_tinygemm_round_trip_and_cpu_kernel(weight):
    q, scales_and_zeros = formats.tinygemm_quantize(weight, 128)
    restored = formats.tinygemm_dequantize(q, scales_and_zeros, 128)
    assert (restored - weight).abs().max().item() <= _max_step(weight, 128) / 2 + 1e-3
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 8)
    assert packed.nbytes + scales_and_zeros.nbytes == formats.tinygemm_bytes(512, 256, 128)
    x = torch.randn(3, 512, dtype=torch.bfloat16)
    got = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 128, scales_and_zeros).float()
    want = x.float() @ restored.t()
    assert ((got - want).norm() / want.norm()).item() < 0.01


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_nf4_bytes_match_bitsandbytes_tensors():
    from qbench.backends.bnb_nf4 import Nf4Linear

    linear = torch.nn.Linear(512, 256, bias=False).to(torch.bfloat16)
    module = Nf4Linear.quantize(linear)
    assert module.stored_bytes() == formats.nf4_bytes(512, 256)
    restored = module.dequantize()
    assert ((restored - linear.weight.float()).norm() / linear.weight.float().norm()).item() < 0.15


def test_awq_marlin_bytes_are_what_marlin_stored_on_the_h100():
    """Marlin pads a weight that misses its 64 x 128 tile; the floor counts the padded tensors it
    reads. Pinned to what the Marlin module stored on the H100 (results/h100/trust/awq-marlin-bytes.sqlite):
    SmolLM2-135M at g64 (K = 576 padded to 640 for q/k/v/o) and Qwen2.5-7B at g128 (no padding)."""
    from qbench.analysis.floor import step_bytes
    from qbench.specs import load_model_spec

    smollm2 = step_bytes(load_model_spec("smollm2-135m"), 512, formats.awq_marlin_bytes, 64)
    qwen = step_bytes(load_model_spec("qwen2.5-7b"), 2048, formats.awq_marlin_bytes, 128)
    assert smollm2.linear_weights == 58_821_120  # the unpadded AWQ formula gives 57,231,360
    assert qwen.linear_weights == 3_390_091_264
    assert formats.marlin_padded_shape(576, 576, 64) == (640, 576)
    assert formats.marlin_padded_shape(1536, 576, 64) == (1536, 576)
    assert formats.marlin_padded_shape(3584, 512, 128) == (3584, 512)
