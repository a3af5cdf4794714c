"""Device side (issue 25): lean's split-K decode attention, two versions of the module side by side on
Qwen2.5-7B's shapes (28 query heads, 4 kv heads, head dim 128; the cache as lean sizes it: the
context, 1024 positions of energy-window room, chunks planned for 2 x SMs programs over the context).

    python tools/device/attention_ab.py OLD_MODULE.py [ctx ...]      # on a GPU
    ROPE=1 python tools/device/attention_ab.py OLD_MODULE.py [ctx ...]   # lean's default: the rope and
                                                                        # the cache write in the kernel

Each figure: one CUDA graph of 28 calls (a step's layers, each on its own cache), replayed 10 times
(int4_shapes.timed), the median replay / 28, in microseconds; both versions checked against the
float32 reference first.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys

import torch
from int4_shapes import timed  # beside this script: one CUDA graph of the calls, the median replay

from qbench.runtimes.kernels import decode_attention as new


def load(path: str):
    spec = importlib.util.spec_from_file_location("attention_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    old = load(sys.argv[1])
    contexts = [int(a) for a in sys.argv[2:]] or [2048, 8192, 16384]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{torch.cuda.get_device_name(0)}: us per call, median of 10 graph replays of 28 calls")
    print(f"{'ctx':>6s} {'before':>8s} {'after':>8s}  max rel err before / after")
    for ctx in contexts:
        planned = ctx + 39  # the block's positions (warm-up and timed steps past the prompt)
        positions = planned + 1024
        layers = []
        for _ in range(28):
            q = torch.randn(28, 128, dtype=torch.bfloat16, device="cuda")
            k = torch.randn(4, positions, 128, dtype=torch.bfloat16, device="cuda")
            v = torch.randn(4, positions, 128, dtype=torch.bfloat16, device="cuda")
            layers.append((q, k, v))
        at = torch.tensor([planned - 1], device="cuda")
        # with ROPE=1: this step's k and v (before the rope) and the tables, as lean hands them over; the
        # reference then attends the cache as the kernel leaves it (the position's row written)
        rope = None
        if os.environ.get("ROPE") == "1":
            angles = torch.rand(positions, 64, device="cuda") * 3
            cos, sin = (torch.cat((f, f), -1).to(torch.bfloat16) for f in (angles.cos(), angles.sin()))
            rope = (torch.randn(4 * 128, dtype=torch.bfloat16, device="cuda"),
                    torch.randn(4 * 128, dtype=torch.bfloat16, device="cuda"), cos, sin)
        figures, errors = [], []
        for module in (old, new):
            q, k, v = layers[0]
            if rope is None:
                want = module.decode_attention_reference(q, k, v, at, 128**-0.5).float()
                got = module._launch(q, k, v, at, 128**-0.5, 2 * sms, planned).float()
            else:
                got = module._launch(q, k, v, at, 128**-0.5, 2 * sms, planned, rope).float()
                q_rot = module.rope_reference(q, rope[2][planned - 1], rope[3][planned - 1]).to(q.dtype)
                want = module.decode_attention_reference(q_rot, k, v, at, 128**-0.5).float()
            errors.append(((got - want).abs().max() / want.abs().max()).item())
            calls = [functools.partial(module._launch, *a, at, 128**-0.5, 2 * sms, planned, rope) for a in layers]
            figures.append(timed(calls, torch.device("cuda")))
        print(f"{ctx:6d} {figures[0]:8.2f} {figures[1]:8.2f}  {errors[0]:.2e} / {errors[1]:.2e}", flush=True)


if __name__ == "__main__":
    main()
