"""The correctness gate: a backend earns a latency row only if its outputs are right.

1. Layer check: every quantised layer's kernel output against the same layer multiplied by its
   dequantised weight (relative Frobenius error), for a batch-1 input and a multi-row input.
2. Model check: the whole model's logits over the timed steps against the same model running the
   dequantised weights on the plain path (`reference` mode); top-1 agreement and the worst relative
   logit error. For 16-bit backends the reference is the eager run itself, which still catches a
   graph replay that computes something different.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction

import torch

from qbench.session.gate_limits import LOGIT_TOLERANCE, TOP1_THRESHOLD

LAYER_TOLERANCE = 0.02  # relative error of a quantised layer vs its dequantised reference


@dataclass(frozen=True)
class LayerCheck:
    layers: int
    worst_relative_error: float
    worst_layer: str
    passed: bool


@torch.inference_mode()
def check_layers(layers: list[tuple[str, torch.nn.Module]], dtype: torch.dtype, seed: int = 0) -> LayerCheck:
    """`layers`: (name, QuantLinear) pairs, as a runner's `quant_layers()` lists them."""
    generator = torch.Generator().manual_seed(seed)
    worst, worst_name, count = 0.0, "", 0
    for name, module in layers:
        device = next(iter(module.stored_tensors())).device
        for rows in (1, 16):
            x = torch.randn(rows, module.in_features, generator=generator).to(device, dtype)
            module.reference = False
            got = module(x).float()
            module.reference = True
            want = module(x).float()
            module.reference = False
            error = ((got - want).norm() / want.norm().clamp(min=1e-12)).item()
            if not error <= worst:  # also catches NaN
                worst, worst_name = error, name
        count += 1
    return LayerCheck(count, worst, worst_name, passed=worst <= LAYER_TOLERANCE)


@dataclass(frozen=True)
class LogitCheck:
    steps: int
    top1_matches: int
    top1_agreement: float  # top1_matches / steps, for display
    top1_threshold: float
    worst_relative_error: float
    passed: bool

    def failure(self) -> str:
        if self.passed:
            return ""
        if not self.worst_relative_error <= LOGIT_TOLERANCE:
            return f"logit relative error {self.worst_relative_error:.3g} > {LOGIT_TOLERANCE}"
        return (
            f"top-1 agreement {self.top1_matches}/{self.steps} ({self.top1_agreement:.0%}) < {self.top1_threshold:.0%}"
        )


def top1_passes(matches: int, steps: int, threshold: Fraction) -> bool:
    return Fraction(matches, steps) >= threshold


def compare_logits(logits: torch.Tensor, reference: torch.Tensor, weights: str = "synthetic") -> LogitCheck:
    threshold = TOP1_THRESHOLD["synthetic" if weights == "synthetic" else "real"]
    steps = logits.shape[0]
    matches = int((logits.argmax(dim=-1) == reference.argmax(dim=-1)).sum().item())
    errors = (logits - reference).norm(dim=-1) / reference.norm(dim=-1).clamp(min=1e-12)
    worst = errors.max().item()  # NaN propagates and fails the comparison below
    passed = top1_passes(matches, steps, threshold) and worst <= LOGIT_TOLERANCE
    return LogitCheck(steps, matches, matches / steps, float(threshold), worst, passed=passed)


def as_dict(check) -> dict:
    return asdict(check)
