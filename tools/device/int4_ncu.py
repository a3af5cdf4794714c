"""Device side (issue 25): what bounds qbench-int4's GEMV, from Nsight Compute. Launches each of
Qwen2.5-7B's four fused decoder shapes through `gemv_int4.launch` with its block table entry, then
qbench's bf16 GEMV on the same shapes (the kernel that reads at a device copy's rate), each twice
(the second launch is the one to read: the first compiles); run it under ncu:

    bash tools/device/run.sh ncu tools/device/int4_ncu.py      # ncu's sections into $OUT/ncu.txt

(the sections that say occupancy, waves, stalls and DRAM throughput). ncu flushes the caches
before each profiled launch and holds the clocks at base: its times are not the step's, its ratios
(achieved occupancy, DRAM % of peak, stall reasons) are what it is for. SHAPES=name,... picks
shapes; BLOCKS="n,g,s,w[,1]" overrides the table entry for all of them.
"""

from __future__ import annotations

import os

import torch

from qbench.registry import load_backend
from qbench.runtimes.kernels import gemv, gemv_int4

GROUP = 128
SHAPES = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944)}


def main() -> None:
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    wanted = os.environ.get("SHAPES", ",".join(SHAPES)).split(",")
    override = os.environ.get("BLOCKS")
    backend = load_backend("qbench-int4")
    for name in wanted:
        n, k = SHAPES[name]
        torch.manual_seed(0)
        linear = torch.nn.Linear(k, n, bias=False, device=dev, dtype=torch.bfloat16)
        with torch.no_grad():
            linear.weight.normal_(0, 0.02)
        x = torch.randn(k, dtype=torch.bfloat16, device=dev)
        module = backend.quantize_linear(linear, GROUP)
        module.release_reference()
        if override:
            parts = [int(p) for p in override.split(",")]
            blocks = tuple(parts[:4]) + ((bool(parts[4]),) if len(parts) > 4 else ())
        else:
            blocks = gemv_int4.choose_blocks(n, k, sms, GROUP, gemv_int4.hopper(dev))
        rows = -(-n // blocks[0])
        print(f"{name} {n}x{k}: qbench-int4 blocks {blocks}: {rows} row blocks x split {blocks[2]} = "
              f"{rows * blocks[2]} programs on {sms} SMs", flush=True)
        for _ in range(2):
            gemv_int4.launch(x, module.qweight, module.scales, module.zeros, None, GROUP, blocks)
        torch.cuda.synchronize()
        chosen = gemv.choose_blocks(n, k, sms)
        print(f"{name} {n}x{k}: bf16 GEMV blocks {chosen}", flush=True)
        for _ in range(2):
            gemv.launch(x, linear.weight, None, chosen)
        torch.cuda.synchronize()
        del module, linear
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
