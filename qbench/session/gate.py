"""The correctness gate: a backend earns a latency row only if its outputs are right.

1. Layer check: every quantised layer's kernel output against the same layer multiplied by its
   dequantised weight (relative Frobenius error), for a batch-1 input and a multi-row input.
2. Model check: the whole model's logits over the timed steps against the same model running the
   dequantised weights on the plain path (`reference` mode); top-1 agreement and the worst relative
   logit error. For 16-bit backends the reference is the eager run itself, which still catches a
   graph replay that computes something different.

Rounded activations. A backend whose kernels also round the activations (fp8-dyn: each token cast to
FP8 e4m3, 3 mantissa bits) makes the model's output jump wherever a rounding difference anywhere
upstream moves an activation across an FP8 step, and random (synthetic) weights amplify that through
the depth: on qbench's synthetic Qwen2.5-7B, the reference itself with 0.1% noise on every linear's
output moves its logits past the limit with FP8 activations, and by a fifth of it without
(tools/gate_sensitivity.py, results/cpu/gate-sensitivity/). The logit check cannot tell a right
kernel from rounding noise there. So for such a backend on synthetic weights:
3. Layers on the model's own activations: during the reference run, every call of every quantised
   layer (the prefill's many-row GEMM included) also runs the kernel on the very input the model gave
   the layer; each against the reference output, within the layer check's tolerance. Decisive.
   The logit check is then recorded but decides only that the logits are closer to the reference
   than a zero output is (relative error < 1), and the cell is flagged `layers-only`.
With real weights the logit check decides for every backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from fractions import Fraction

import torch

from qbench.session.gate_limits import LOGIT_TOLERANCE, TOP1_THRESHOLD

LAYER_TOLERANCE = 0.02  # relative error of a quantised layer vs its dequantised reference
UNRELATED_ERROR = 1.0  # relative logit error of a zero output: logits this far off are unrelated to the reference


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| (Frobenius, float32): a layer's kernel output against its reference."""
    got, want = got.float(), want.float()
    return ((got - want).norm() / want.norm().clamp(min=1e-12)).item()


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
            got = module(x)
            module.reference = True
            want = module(x)
            module.reference = False
            error = relative_error(got, want)
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
    # False: the backend rounds its activations and the weights are synthetic (the module's note):
    # passed then says only that the logits are closer to the reference than a zero output
    decisive: bool = True

    def failure(self) -> str:
        if self.passed:
            return ""
        if not self.decisive:
            return (
                f"logit relative error {self.worst_relative_error:.3g} >= {UNRELATED_ERROR:g} "
                "(no closer to the reference than a zero output)"
            )
        if not self.worst_relative_error <= LOGIT_TOLERANCE:
            return f"logit relative error {self.worst_relative_error:.3g} > {LOGIT_TOLERANCE}"
        return (
            f"top-1 agreement {self.top1_matches}/{self.steps} ({self.top1_agreement:.0%}) < {self.top1_threshold:.0%}"
        )


def top1_passes(matches: int, steps: int, threshold: Fraction) -> bool:
    return Fraction(matches, steps) >= threshold


def logits_decide(weights: str, rounds_activations: bool) -> bool:
    """Whether the model check's logits decide the verdict (the module's note)."""
    return not (rounds_activations and weights == "synthetic")


def compare_logits(
    logits: torch.Tensor, reference: torch.Tensor, weights: str = "synthetic", rounds_activations: bool = False
) -> LogitCheck:
    threshold = TOP1_THRESHOLD["synthetic" if weights == "synthetic" else "real"]
    steps = logits.shape[0]
    matches = int((logits.argmax(dim=-1) == reference.argmax(dim=-1)).sum().item())
    errors = (logits - reference).norm(dim=-1) / reference.norm(dim=-1).clamp(min=1e-12)
    worst = errors.max().item()  # NaN propagates and fails the comparisons below
    decisive = logits_decide(weights, rounds_activations)
    if decisive:
        passed = top1_passes(matches, steps, threshold) and worst <= LOGIT_TOLERANCE
    else:
        passed = worst < UNRELATED_ERROR
    return LogitCheck(steps, matches, matches / steps, float(threshold), worst, passed=passed, decisive=decisive)


@dataclass(frozen=True)
class ModelLayerCheck:
    """Every quantised layer's kernel on the inputs the model gave it during the reference run."""

    calls: int
    worst_relative_error: float
    worst_layer: str
    worst_rows: int  # how many rows (tokens) that call had: the prefill's, or 1 for a decode step
    most_rows: int  # the largest call compared (the prefill's rows)
    passed: bool


class _ModelLayerTracker:
    def __init__(self) -> None:
        self.calls, self.worst, self.worst_layer, self.worst_rows, self.most_rows = 0, 0.0, "", 0, 0

    def result(self) -> ModelLayerCheck:
        passed = self.calls > 0 and self.worst <= LAYER_TOLERANCE
        return ModelLayerCheck(self.calls, self.worst, self.worst_layer, self.worst_rows, self.most_rows, passed)


@contextmanager
def layers_on_model_inputs(layers: list[tuple[str, torch.nn.Module]]) -> Iterator[_ModelLayerTracker]:
    """While the body runs the model in reference mode, each call of each layer in `layers` also runs
    the layer's kernel on the same input (its `forward` with `reference` off, which hooks do not see)
    and compares it with the reference output the model goes on with (unchanged)."""
    tracker = _ModelLayerTracker()

    def hook_for(name: str):
        @torch.inference_mode()
        def compare(module, args, output) -> None:
            if not module.reference:
                return
            module.reference = False
            try:
                got = module.forward(*args)
            finally:
                module.reference = True
            error = relative_error(got, output)
            rows = args[0].numel() // args[0].shape[-1]
            tracker.calls += 1
            tracker.most_rows = max(tracker.most_rows, rows)
            if not error <= tracker.worst:  # also catches NaN
                tracker.worst, tracker.worst_layer, tracker.worst_rows = error, name, rows

        return compare

    handles = [module.register_forward_hook(hook_for(name)) for name, module in layers]
    try:
        yield tracker
    finally:
        for handle in handles:
            handle.remove()


def as_dict(check) -> dict:
    return asdict(check)
