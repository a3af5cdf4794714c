"""Device side (issue 25): lean's split-K decode attention on Qwen2.5-7B's shapes (28 query heads, 4 kv
heads, head dim 128, lean's rope and cache write in the kernel; the cache as lean sizes it: the context
and 1024 positions of energy-window room), swept over how many (kv head, chunk) programs it plans for,
the positions a program's loop takes a step (BLOCK_N), and whether the chunks are combined by a second
kernel or by the last chunk of each kv head to finish (`fused`; FUSED_SPLITS chunks loaded at once).
lean's defaults: BLOCK_N 32, two programs an SM, the second kernel.

    python tools/device/attention_sweep.py [MODULE.py] [ctx ...]    # on a GPU; MODULE: another copy of
                                                                     # decode_attention.py (default: qbench's)

Each figure: one CUDA graph of 28 calls (a step's layers, each on its own cache), replayed 10 times
(int4_shapes.timed), the median replay / 28, in microseconds, after a check against the float32
reference (the largest error relative to the output's largest value). With `--tiny` (any machine,
Triton's interpreter on the CPU) the same sweep runs on a small shape to check the script.
"""

from __future__ import annotations

import functools
import sys

import torch
from attention_ab import load  # beside this script: another copy of decode_attention.py, by path
from int4_shapes import timed  # beside this script: one CUDA graph of the calls, the median replay

from qbench.runtimes.kernels import decode_attention

HEADS, KV_HEADS, HEAD_DIM, LAYERS, ROOM = 28, 4, 128, 28, 1024


def main() -> None:
    args = sys.argv[1:]
    tiny = "--tiny" in args
    args = [a for a in args if a != "--tiny"]
    module = load(args.pop(0)) if args and args[0].endswith(".py") else decode_attention
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = (28, 4, 32, 2, 16) if tiny else (HEADS, KV_HEADS, HEAD_DIM, LAYERS, ROOM)
    heads, kv_heads, head_dim, layers, room = shape
    contexts = [int(a) for a in args] or ([2048, 8192, 16384] if not tiny else [100])
    sms = torch.cuda.get_device_properties(0).multi_processor_count if dev.type == "cuda" else 8
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu (interpreter)"
    print(f"{name}, {sms} SMs: us per call, median of 10 graph replays of {layers} calls; error vs float32 reference")
    # (programs per SM / 2, fused, FUSED_SPLITS, BLOCK_N): both combines at four program counts and two
    # blocks of positions a program's loop step, then the fused path's chunks loaded at once
    variants = [(factor, fused, 8 if fused else 0, block) for block in (32, 64) for factor in (0.5, 1, 2, 4)
                for fused in (False, True)]
    variants += [(factor, True, splits, 32) for factor in (1, 2) for splits in (4, 16)]
    for ctx in contexts:
        planned = ctx + 39  # the block's positions (warm-up and timed steps past the prompt)
        positions = planned + room
        caches = [torch.randn(1, 2, kv_heads, positions, head_dim, dtype=dtype, device=dev) for _ in range(layers)]
        qs = [torch.randn(heads, head_dim, dtype=dtype, device=dev) for _ in range(layers)]
        angles = torch.rand(positions, head_dim // 2, device=dev) * 3
        cos, sin = (torch.cat((f, f), -1).to(dtype) for f in (angles.cos(), angles.sin()))
        k_new = torch.randn(kv_heads * head_dim, dtype=dtype, device=dev)
        v_new = torch.randn(kv_heads * head_dim, dtype=dtype, device=dev)
        rope = (k_new, v_new, cos, sin)
        at = torch.tensor([planned - 1], device=dev)
        q_rot = module.rope_reference(qs[0], cos[planned - 1], sin[planned - 1]).to(dtype)
        k_cache, v_cache = caches[0][0, 0].clone(), caches[0][0, 1].clone()
        k_cache[:, planned - 1] = module.rope_reference(k_new.view(kv_heads, head_dim), cos[planned - 1],
                                                        sin[planned - 1]).to(dtype)
        v_cache[:, planned - 1] = v_new.view(kv_heads, head_dim)
        want = module.decode_attention_reference(q_rot, k_cache, v_cache, at, head_dim**-0.5).float()
        for factor, fused, splits, block in variants:
            programs = max(kv_heads, int(factor * 2 * sms))
            module.BLOCK_N = block
            if fused:
                module.FUSED_SPLITS = splits
            launch = functools.partial(module._launch, scale=head_dim**-0.5, programs=programs, planned=planned,
                                       rope=rope, fused=fused)

            def call(layer, launch=launch, caches=caches, qs=qs, at=at):
                cache = caches[layer]
                return launch(qs[layer], cache[0, 0], cache[0, 1], at)

            got = call(0).float()
            error = ((got - want).abs().max() / want.abs().max()).item()
            chunk, count = module.plan_splits(planned, kv_heads, programs)
            figure = timed([functools.partial(call, layer) for layer in range(layers)], dev)
            again = call(0).float()  # after the replays too: the fused path's counters back at zero each call
            error = max(error, ((again - want).abs().max() / want.abs().max()).item())
            how = f"fused x{splits:<2d}" if fused else "two kernels"
            print(f"ctx {ctx:6d}  block {block:2d}  programs {programs:4d} (chunk {chunk:5d}, {count:3d} a kv head)"
                  f"  {how:12s} {figure:8.2f} us  err {error:.1e}", flush=True)


if __name__ == "__main__":
    main()
