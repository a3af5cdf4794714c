"""The memory floor: the bytes one decode step must read, divided by memory bandwidth.

For one batch-1 step at context length `ctx` a decoder must read, at their stored sizes:
  - every decoder linear layer's weight (for 4-bit formats: packed ints + scales + zeros),
  - every bias and norm weight (16-bit),
  - one row of the token embedding (16-bit),
  - the whole lm_head (16-bit; with tied embeddings it is the embedding matrix),
  - the KV cache up to this context: layers x 2 (K and V) x kv_heads x head_dim x ctx x 2 bytes.
    floor_ms = step_bytes / bandwidth
with bandwidth either the GPU's datasheet peak or the copy bandwidth measured on the card.
Activations, the new K/V entry and logits written are a few MB at most and are left out, which
keeps the floor a lower bound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qbench.specs import GpuSpec, ModelSpec

SIXTEEN_BIT = 2  # bytes per bf16/fp16 element


def bf16_linear_bytes(in_features: int, out_features: int, group_size: int = 0) -> int:
    return in_features * out_features * SIXTEEN_BIT


@dataclass(frozen=True)
class StepBytes:
    linear_weights: int
    biases: int
    norms: int
    embedding_row: int
    lm_head: int
    kv_cache: int

    @property
    def weights(self) -> int:
        return self.linear_weights + self.biases + self.norms + self.embedding_row + self.lm_head

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache


def step_bytes(
    spec: ModelSpec,
    ctx: int,
    linear_bytes: Callable[[int, int, int], int] = bf16_linear_bytes,
    group_size: int = 128,
) -> StepBytes:
    if ctx < 0:
        raise ValueError(f"ctx must be >= 0, got {ctx}")
    linear = 0
    biases = 0
    for _, in_features, out_features, has_bias in spec.linear_shapes():
        linear += linear_bytes(in_features, out_features, group_size)
        biases += out_features * SIXTEEN_BIT if has_bias else 0
    norms_per_layer = 2 * spec.hidden_size * SIXTEEN_BIT  # input and post-attention RMSNorm
    return StepBytes(
        linear_weights=linear * spec.num_layers,
        biases=biases * spec.num_layers,
        norms=norms_per_layer * spec.num_layers + spec.hidden_size * SIXTEEN_BIT,  # + final norm
        embedding_row=spec.hidden_size * SIXTEEN_BIT,
        lm_head=spec.vocab_size * spec.hidden_size * SIXTEEN_BIT,
        kv_cache=spec.num_layers * 2 * spec.num_kv_heads * spec.head_dim * ctx * SIXTEEN_BIT,
    )


def floor_ms(total_bytes: int, bandwidth_gbps: float | None) -> float | None:
    """Milliseconds to move `total_bytes` at `bandwidth_gbps` (1e9 bytes/s); None if unknown."""
    if not bandwidth_gbps:
        return None
    return total_bytes / (bandwidth_gbps * 1e9) * 1e3


def floor_records(
    spec: ModelSpec, gpu_spec: GpuSpec, fmt_backend: Any, contexts: tuple[int, ...], group_size: int
) -> list[dict[str, Any]]:
    """`qbench floor`'s records: per context, the bytes a step of `fmt_backend`'s format reads, by kind,
    and the floor at `gpu_spec`'s datasheet bandwidth (None where it has none)."""
    records = []
    for context in contexts:
        counted = step_bytes(spec, context, fmt_backend.linear_bytes, group_size)
        records.append(
            {
                "model": spec.name,
                "gpu": gpu_spec.name,
                "backend": fmt_backend.name,
                "group_size": group_size if fmt_backend.bits < 16 else None,
                "ctx": context,
                "linear_weights": counted.linear_weights,
                "biases": counted.biases,
                "norms": counted.norms,
                "embedding_row": counted.embedding_row,
                "lm_head": counted.lm_head,
                "weights": counted.weights,
                "kv_cache": counted.kv_cache,
                "total": counted.total,
                "peak_bandwidth_gbps": gpu_spec.peak_bandwidth_gbps,
                "bandwidth_source": gpu_spec.bandwidth_source,
                "floor_ms": floor_ms(counted.total, gpu_spec.peak_bandwidth_gbps),
            }
        )
    return records
