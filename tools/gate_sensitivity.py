"""How far the gate's reference logits move under rounding noise alone, with and without FP8 activations.

    python tools/gate_sensitivity.py [--model qwen2.5-7b] [--prompt 128] [--steps 10] [--eps 0.004,0.001]

Runs on the CPU (a 7B model needs about 16 GB of memory and a few minutes on 2 cores). qbench's
synthetic model for `--model` (the weights every GPU session of that model uses, seed 0) gets FP8
e4m3 weights with a float32 scale per output row in every decoder linear (qbench.formats.fp8_quantize,
dequantised to bf16: the gate's reference weights for fp8-wo and fp8-dyn). Two activation modes:

  wo   bf16 activations: fp8-wo's reference
  dyn  each token's activations rounded to FP8 per token (qbench.formats.fp8_per_token): fp8-dyn's

For each mode the model runs the same random tokens (a prompt, then teacher-forced decode steps)
once as the reference and once with every linear's output multiplied by (1 + eps * N(0, 1)): a
kernel that differs from the reference by about eps in every layer (the H100's layer check measured
0.36-0.43% between gemlite's kernels and these references), and nowhere else. The worst relative
logit error between the two runs over the steps, and their top-1 agreement, are what the gate's
model check would see from such a kernel: where they pass the gate's limits (0.25, and 50% top-1
on synthetic weights) the check can tell a right kernel from rounding noise; where not, it cannot.
Results: results/cpu/gate-sensitivity/.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from qbench import formats
from qbench.model.build import _synthetic, decoder_linears
from qbench.session.gate import LOGIT_TOLERANCE
from qbench.specs import load_model_spec

ROWS_AT_ONCE = 2048  # a weight is rounded in slices of rows, in place: a 7B model must not be held twice


class Rounded(torch.nn.Module):
    """A decoder linear with FP8 weights; activations per `mode`; optional output noise."""

    mode, eps, generator = "wo", 0.0, None

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        with torch.no_grad():
            for row in range(0, linear.weight.shape[0], ROWS_AT_ONCE):
                part = linear.weight[row : row + ROWS_AT_ONCE]
                q, scales = formats.fp8_quantize(part)
                part.copy_(formats.channel_dequantize(q, scales).to(part.dtype))
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = formats.fp8_per_token(x).to(x.dtype) if Rounded.mode == "dyn" else x
        out = F.linear(inputs, self.weight, self.bias)
        if Rounded.eps:
            noise = torch.randn(out.shape, generator=Rounded.generator, dtype=torch.float32)
            out = (out.float() * (1 + Rounded.eps * noise)).to(out.dtype)
        return out


@torch.inference_mode()
def logits_of(model, tokens: torch.Tensor, prompt: int, mode: str, eps: float) -> torch.Tensor:
    Rounded.mode, Rounded.eps, Rounded.generator = mode, eps, torch.Generator().manual_seed(2)
    out = model(tokens[:, :prompt], use_cache=True)
    cache, logits = out.past_key_values, [out.logits[0, -1].float()]
    for position in range(prompt, tokens.shape[1] - 1):
        out = model(tokens[:, position : position + 1], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        logits.append(out.logits[0, -1].float())
    return torch.stack(logits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen2.5-7b")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens before the decode steps")
    parser.add_argument("--steps", type=int, default=10, help="decode steps compared (the first is the prompt's)")
    parser.add_argument("--eps", default="0.004,0.001", help="relative noise on every linear's output")
    parser.add_argument("--modes", default="wo,dyn")
    args = parser.parse_args()
    spec = load_model_spec(args.model)
    started = time.monotonic()
    model = _synthetic(spec, torch.bfloat16, "cpu", 0).eval()
    for _, parent, attribute, linear in decoder_linears(model):
        setattr(parent, attribute, Rounded(linear))
    took = time.monotonic() - started
    print(f"{spec.name}: synthetic weights (seed 0), FP8 weights in every decoder linear ({took:.0f} s)")
    vocab = spec.hf_config["vocab_size"]
    tokens = torch.randint(0, vocab, (1, args.prompt + args.steps), generator=torch.Generator().manual_seed(1))
    limits = f"the gate's limits: logit error {LOGIT_TOLERANCE}, top-1 50%"
    print(f"{args.prompt} prompt tokens, {args.steps} decode steps; {limits}")
    for mode in args.modes.split(","):
        reference = logits_of(model, tokens, args.prompt, mode, 0.0)
        for eps in (float(e) for e in args.eps.split(",")):
            started = time.monotonic()
            noisy = logits_of(model, tokens, args.prompt, mode, eps)
            errors = (noisy - reference).norm(dim=-1) / reference.norm(dim=-1)
            worst, top1 = errors.max().item(), int((noisy.argmax(-1) == reference.argmax(-1)).sum())
            print(
                f"{mode} eps {eps:g}: worst logit error {worst:.3f} (steps {errors.min():.3f}-{worst:.3f}), "
                f"top-1 {top1}/{len(errors)}; {'within' if worst <= LOGIT_TOLERANCE else 'past'} the limit "
                f"({time.monotonic() - started:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
