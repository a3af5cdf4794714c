"""Weight formats as published checkpoints (4-bit) or gemlite (8-bit, 4-bit) store them, in pure torch.

Every function here runs on CPU or GPU and is the reference the kernels are checked against:
quantise a float weight [out, in] to the format's tensors, and dequantise those tensors back.
Round-to-nearest (RTN) is enough for latency work; a GPTQ- or AWQ-calibrated checkpoint has the
same tensor layout and loads through the same `*_dequantize` functions.

Layouts (K = in_features, N = out_features, g = group size):
  AWQ (GEMM, as AutoAWQ saves):  qweight int32 [K, N/8], qzeros int32 [K/g, N/8], scales fp16 [K/g, N];
                                 8 nibbles per int32 along N in the order 0,2,4,6,1,3,5,7; asymmetric.
  GPTQ v1 (as AutoGPTQ saves):   qweight int32 [K/8, N] (8 nibbles along K), qzeros int32 [K/g, N/8]
                                 storing zero-1 along N, scales fp16 [K/g, N], g_idx int32 [K].
  tinygemm (torch int4):         uint4 [N, K] + scales_and_zeros bf16 [K/g, N, 2];
                                 w = (q - 8) * scale + zero.
"""

from __future__ import annotations

import math

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a packed int32 holds column AWQ_ORDER[i]


def check_group_shape(in_features: int, out_features: int, group_size: int) -> None:
    if in_features % group_size:
        raise ValueError(f"in_features {in_features} is not a multiple of group size {group_size}")
    if out_features % 8:
        raise ValueError(f"out_features {out_features} is not a multiple of 8")


def _grouped(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    out_features, in_features = weight.shape
    check_group_shape(in_features, out_features, group_size)
    return weight.float().reshape(out_features, in_features // group_size, group_size)


def rtn_asymmetric(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit RTN: returns q uint8 [N, K], scales float [N, K/g], zeros int [N, K/g]."""
    grouped = _grouped(weight, group_size)
    wmin = grouped.amin(dim=-1).clamp(max=0)
    wmax = grouped.amax(dim=-1).clamp(min=0)
    scales = ((wmax - wmin) / 15).clamp(min=1e-8)
    zeros = torch.round(-wmin / scales).clamp(0, 15)
    q = torch.clamp(torch.round(grouped / scales[..., None]) + zeros[..., None], 0, 15)
    return q.reshape(weight.shape).to(torch.uint8), scales, zeros.to(torch.int32)


def rtn_symmetric(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric 4-bit RTN as GPTQ's sym=True does it: zero point 8, scale = 2*max|w|/15."""
    grouped = _grouped(weight, group_size)
    scales = (2 * grouped.abs().amax(dim=-1) / 15).clamp(min=1e-8)
    zeros = torch.full_like(scales, 8, dtype=torch.int32)
    q = torch.clamp(torch.round(grouped / scales[..., None]) + 8, 0, 15)
    return q.reshape(weight.shape).to(torch.uint8), scales, zeros


def pack_columns(values: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """Pack 4-bit values [R, C] into int32 [R, C/8] along columns, nibble i <- column order[i]."""
    rows, cols = values.shape
    values = values.to(torch.int32).reshape(rows, cols // 8, 8)
    packed = torch.zeros(rows, cols // 8, dtype=torch.int32, device=values.device)
    for nibble, column in enumerate(order):
        packed |= values[:, :, column] << (4 * nibble)
    return packed


def unpack_columns(packed: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    rows, packed_cols = packed.shape
    values = torch.empty(rows, packed_cols, 8, dtype=torch.int32, device=packed.device)
    for nibble, column in enumerate(order):
        values[:, :, column] = (packed >> (4 * nibble)) & 0xF
    return values.reshape(rows, packed_cols * 8)


SEQUENTIAL = tuple(range(8))


# ---- AWQ ---------------------------------------------------------------------------------------


def awq_quantize(weight: torch.Tensor, group_size: int = 128) -> dict[str, torch.Tensor]:
    q, scales, zeros = rtn_asymmetric(weight, group_size)
    return {
        "qweight": pack_columns(q.t().contiguous(), AWQ_ORDER),  # [K, N/8]
        "qzeros": pack_columns(zeros.t().contiguous(), AWQ_ORDER),  # [K/g, N/8]
        "scales": scales.t().contiguous().to(torch.float16),  # [K/g, N]
    }


def awq_dequantize(tensors: dict[str, torch.Tensor], group_size: int) -> torch.Tensor:
    """Back to a float weight [N, K] (float32)."""
    q = unpack_columns(tensors["qweight"], AWQ_ORDER)  # [K, N]
    zeros = unpack_columns(tensors["qzeros"], AWQ_ORDER).repeat_interleave(group_size, dim=0)
    scales = tensors["scales"].float().repeat_interleave(group_size, dim=0)
    return ((q - zeros).float() * scales).t().contiguous()


def awq_bytes(in_features: int, out_features: int, group_size: int) -> int:
    groups = in_features // group_size
    return in_features * out_features // 2 + groups * out_features // 2 + groups * out_features * 2


def marlin_padded_shape(in_features: int, out_features: int, group_size: int) -> tuple[int, int]:
    """(K, N) that Marlin stores a weight at. Its thread tile is 64 x 128 in either orientation, so
    gptqmodel (7.6, `utils/marlin.py: marlin_padded_nk`) zero-pads a misaligned weight to the smaller
    of (N to 64, K to lcm(128, g)) and (N to 128, K to lcm(64, g)), ties to the first; the padded
    rows and columns are stored and read like the rest. SmolLM2's K = 576 at g64 becomes 640.
    A group size of -1 (one group over K, as Marlin calls it) pads K to the tile alone."""

    def round_up(value: int, multiple: int) -> int:
        return -(-value // multiple) * multiple

    candidates = (
        (round_up(out_features, 64), round_up(in_features, math.lcm(128, group_size))),
        (round_up(out_features, 128), round_up(in_features, math.lcm(64, group_size))),
    )
    padded_n, padded_k = min(candidates, key=lambda nk: (nk[0] * nk[1], nk[0] + nk[1]))
    return padded_k, padded_n


def awq_marlin_bytes(in_features: int, out_features: int, group_size: int) -> int:
    """AWQ tensors as Marlin stores them: repacked (same size) at the tile-padded shape."""
    return awq_bytes(*marlin_padded_shape(in_features, out_features, group_size), group_size)


# ---- GPTQ v1 -----------------------------------------------------------------------------------


def gptq_quantize(weight: torch.Tensor, group_size: int = 128) -> dict[str, torch.Tensor]:
    q, scales, zeros = rtn_symmetric(weight, group_size)
    out_features, in_features = weight.shape
    # qweight packs 8 consecutive input rows into one int32: transpose, pack "columns", transpose.
    qweight = pack_columns(q.contiguous(), SEQUENTIAL).t().contiguous()  # [K/8, N]
    return {
        "qweight": qweight,
        "qzeros": pack_columns((zeros - 1).t().contiguous() & 0xF, SEQUENTIAL),  # v1: zero-1
        "scales": scales.t().contiguous().to(torch.float16),
        "g_idx": (torch.arange(in_features, device=weight.device) // group_size).to(torch.int32),
    }


def gptq_dequantize(tensors: dict[str, torch.Tensor], group_size: int) -> torch.Tensor:
    q = unpack_columns(tensors["qweight"].t().contiguous(), SEQUENTIAL).t()  # [K, N]
    zeros = unpack_columns(tensors["qzeros"], SEQUENTIAL) + 1  # v1 stores zero-1
    in_features = tensors["qweight"].shape[0] * 8
    g_idx = tensors.get("g_idx")
    g_idx = torch.arange(in_features, device=q.device) // group_size if g_idx is None else g_idx.long()
    scales = tensors["scales"].float()[g_idx]
    return ((q - zeros[g_idx]).float() * scales).t().contiguous()


def gptq_bytes(in_features: int, out_features: int, group_size: int) -> int:
    """Bytes the no-act-order kernel reads: qweight, qzeros, scales (g_idx is not read)."""
    return awq_bytes(in_features, out_features, group_size)


# ---- tinygemm (torch.ops.aten._weight_int4pack_mm) ----------------------------------------------


def tinygemm_quantize(weight: torch.Tensor, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns q uint8 [N, K] (values 0..15) and scales_and_zeros bf16 [K/g, N, 2]."""
    grouped = _grouped(weight, group_size)
    wmin, wmax = grouped.amin(dim=-1), grouped.amax(dim=-1)
    scales = ((wmax - wmin) / 15).clamp(min=1e-6)
    q = torch.clamp(torch.round((grouped - wmin[..., None]) / scales[..., None]), 0, 15)
    zeros = wmin + 8 * scales  # so that w = (q - 8) * scale + zero
    scales_and_zeros = torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous()
    return q.reshape(weight.shape).to(torch.uint8), scales_and_zeros.to(torch.bfloat16)


def tinygemm_dequantize(q: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    scales = scales_and_zeros[..., 0].float().t().repeat_interleave(group_size, dim=1)
    zeros = scales_and_zeros[..., 1].float().t().repeat_interleave(group_size, dim=1)
    return (q.float() - 8) * scales + zeros


def tinygemm_bytes(in_features: int, out_features: int, group_size: int) -> int:
    return in_features * out_features // 2 + (in_features // group_size) * out_features * 2 * 2


# ---- bitsandbytes NF4 ---------------------------------------------------------------------------

NF4_BLOCKSIZE = 64
NESTED_BLOCKSIZE = 256


def nf4_bytes(in_features: int, out_features: int, blocksize: int = NF4_BLOCKSIZE) -> int:
    """bnb NF4 with double quantisation (compress_statistics=True, bnb's default):
    packed nibbles + one uint8 absmax per block + one fp32 absmax per 256 blocks + fp32 offset,
    plus the two code books (16 fp32 NF4 values, 256 fp32 nested values)."""
    elements = in_features * out_features
    blocks = -(-elements // blocksize)
    nested_blocks = -(-blocks // NESTED_BLOCKSIZE)
    return elements // 2 + blocks + nested_blocks * 4 + 4 + 16 * 4 + 256 * 4


# ---- 8-bit per channel, and gemlite's grouped 4-bit ---------------------------------------------
# Round-to-nearest, in plain torch, on CPU or GPU. These are the tensors qbench hands gemlite
# (qbench/backends/gemlite_formats.py); gemlite stores them as they are (8-bit: a transposed view of the
# same [N, K] tensor; scales [1, N]) or packs them (4-bit: eight values along K to an int32).
#   FP8 e4m3 (fp8-wo, fp8-dyn): q float8_e4m3fn [N, K], scales float32 [N, 1] = max|w| / 448 per
#                                output channel; w = q * scale. The cast to e4m3 rounds to nearest even.
#   INT8 (int8-wo):              q int8 [N, K] in -127..127, scales float32 [N, 1] = max|w| / 127;
#                                w = q * scale (symmetric, no zero point).
#   gemlite int4 (gemlite-int4): q uint8 [N, K] in 0..15, scales bf16 [N, K/g], zeros bf16 [N, K/g]
#                                (integers 0..15); gemlite keeps shift = bf16(-zeros * scales) in place
#                                of zeros and its kernel computes w = q * scale + shift (one fma).
# A row (or group) of zeros gets scale 1 and quantises to zeros.

FP8_E4M3_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
INT8_MAX = 127
FP32_SCALE = 4  # bytes of one float32 per-channel scale


def _channel_scales(weight: torch.Tensor, largest: float) -> torch.Tensor:
    """float32 [N, 1]: max|w| of each output row / the format's largest value (1 for a zero row)."""
    amax = weight.float().abs().amax(dim=1, keepdim=True)
    return torch.where(amax > 0, amax / largest, torch.ones_like(amax))


def fp8_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 e4m3 per output channel: (q float8_e4m3fn [N, K], scales float32 [N, 1])."""
    scales = _channel_scales(weight, FP8_E4M3_MAX)
    q = (weight.float() / scales).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scales


def int8_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric INT8 per output channel: (q int8 [N, K] in -127..127, scales float32 [N, 1])."""
    scales = _channel_scales(weight, INT8_MAX)
    q = torch.round(weight.float() / scales).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scales


def channel_dequantize(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """FP8 or INT8 per-channel back to a float32 weight [N, K]."""
    return q.float() * scales.float()


def channel8_bytes(in_features: int, out_features: int, group_size: int = 0) -> int:
    """FP8 or INT8 per channel as gemlite reads it: one byte a weight, one float32 scale a row
    (`group_size` is not used: one scale spans the whole input dimension)."""
    return in_features * out_features + out_features * FP32_SCALE


def fp8_per_token(x: torch.Tensor) -> torch.Tensor:
    """Activations as fp8-dyn's kernel sees them, back in float32: each row (token) scaled by
    max|x| / 448, cast to e4m3 and scaled back (gemlite's `scale_activations_per_token`)."""
    rows = x.float()
    scales = rows.abs().amax(dim=-1, keepdim=True) / FP8_E4M3_MAX
    scales = scales.clamp(min=1e-6)  # gemlite's floor: an all-zero token stays zero
    return (rows / scales).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn).float() * scales


def gemlite_int4_quantize(
    weight: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit RTN with a bf16 scale and an integer zero per group of `group_size` inputs:
    (q uint8 [N, K], scales bf16 [N, K/g], zeros bf16 [N, K/g]). The scale is rounded to bf16 before
    q is computed, so q fits the scale the kernel multiplies by."""
    out_features, in_features = weight.shape
    if in_features % group_size:
        raise ValueError(f"in_features {in_features} is not a multiple of group size {group_size}")
    grouped = weight.float().reshape(out_features, in_features // group_size, group_size)
    wmin = grouped.amin(dim=-1).clamp(max=0)
    wmax = grouped.amax(dim=-1).clamp(min=0)
    spread = wmax - wmin
    scales = torch.where(spread > 0, spread / 15, torch.ones_like(spread)).to(torch.bfloat16).float()
    zeros = torch.round(-wmin / scales).clamp(0, 15)
    q = torch.clamp(torch.round(grouped / scales[..., None]) + zeros[..., None], 0, 15)
    return q.reshape(weight.shape).to(torch.uint8), scales.to(torch.bfloat16), zeros.to(torch.bfloat16)


def gemlite_int4_shift(scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """What gemlite stores in place of the zeros (its fma mode): bf16(-zeros * scales)."""
    return (-zeros.float() * scales.float()).to(torch.bfloat16)


def gemlite_int4_dequantize(
    q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int
) -> torch.Tensor:
    """Back to a float32 weight [N, K] as the kernel computes it: q * scale + bf16(-zeros * scale)."""
    shift = gemlite_int4_shift(scales, zeros).float().repeat_interleave(group_size, dim=1)
    return q.float() * scales.float().repeat_interleave(group_size, dim=1) + shift


def gemlite_int4_bytes(in_features: int, out_features: int, group_size: int) -> int:
    """Packed 4-bit weights (int32 [K/8, N]) + bf16 scale and bf16 shift per group."""
    groups = in_features // group_size
    return in_features * out_features // 2 + groups * out_features * 2 * 2


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """4-bit values [N, K] -> uint8 [N, K/2], high nibble first (the reference's compact copy)."""
    return (q[:, ::2] << 4 | q[:, 1::2]).contiguous()


def unpack_nibbles(nibbles: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] -> 4-bit values [N, K], high nibble first."""
    return torch.stack([nibbles >> 4, nibbles & 0xF], dim=-1).reshape(nibbles.shape[0], -1)
