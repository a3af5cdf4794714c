"""The floor model against hand-computed values."""

import pytest

from qbench import formats
from qbench.analysis.floor import floor_ms, step_bytes
from qbench.specs import load_model_spec


def test_qwen25_7b_bf16_weights_are_14_14_gb():
    counted = step_bytes(load_model_spec("qwen2.5-7b"), ctx=2048)
    # Per layer: q,o 3584x3584; k,v 3584x512; gate,up,down 3584x18944 -> 233,046,016 params; x28 layers.
    assert counted.linear_weights == 233_046_016 * 28 * 2
    assert counted.lm_head == 152_064 * 3_584 * 2  # untied: the whole lm_head every step
    assert counted.embedding_row == 3_584 * 2  # one row of the embedding
    assert counted.biases == (3_584 + 512 + 512) * 28 * 2  # Qwen2 has q/k/v biases
    assert counted.norms == (2 * 28 + 1) * 3_584 * 2
    assert counted.weights == 14_141_245_440
    # KV: 28 layers x (K, V) x 4 kv heads x 128 x 2048 positions x 2 bytes
    assert counted.kv_cache == 28 * 2 * 4 * 128 * 2048 * 2 == 117_440_512
    assert counted.total == 14_258_685_952


def test_floor_ms_at_h100_datasheet_bandwidth():
    total = step_bytes(load_model_spec("qwen2.5-7b"), ctx=2048).total
    assert floor_ms(total, 3350) == pytest.approx(4.2563, abs=1e-4)
    assert floor_ms(total, None) is None


def test_kv_grows_linearly_and_tied_embeddings_still_read_lm_head():
    spec = load_model_spec("qwen2.5-0.5b")
    a, b = step_bytes(spec, 1024), step_bytes(spec, 2048)
    assert b.kv_cache == 2 * a.kv_cache and b.weights == a.weights
    assert spec.tie_embeddings and a.lm_head == 151_936 * 896 * 2


def test_four_bit_formats_count_packed_scales_and_zeros():
    k, n, g = 4096, 4096, 128
    assert formats.awq_bytes(k, n, g) == k * n // 2 + (k // g) * n // 2 + (k // g) * n * 2
    assert formats.gptq_bytes(k, n, g) == formats.awq_bytes(k, n, g)
    assert formats.tinygemm_bytes(k, n, g) == k * n // 2 + (k // g) * n * 4
    blocks = k * n // 64
    assert formats.nf4_bytes(k, n) == k * n // 2 + blocks + (blocks // 256) * 4 + 4 + 16 * 4 + 256 * 4


def test_expected_reduction_for_awq_on_qwen25_7b_is_about_3():
    spec = load_model_spec("qwen2.5-7b")
    bf16 = step_bytes(spec, 2048).total
    awq = step_bytes(spec, 2048, formats.awq_bytes, 128).total
    # lm_head, embedding and KV stay 16-bit, so the whole-step cut is well short of 4x
    assert 2.9 < bf16 / awq < 3.2
