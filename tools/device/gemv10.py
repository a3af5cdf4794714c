"""Device side (issue 10): batch-1 GEMV read rates on Qwen2.5-7B's shapes, bf16, for cuBLAS (F.linear),
torch.compile'd F.linear (default; coordinate-descent tuning; max-autotune) and qbench's Triton GEMV
(every block configuration). Each figure: one CUDA graph of `copies` calls, each on its own weight
copy (together over 8x the L2, so no call finds its weight in L2), replayed 20 times; the median
replay / copies. Prints a table and writes gemv10.json to $OUT."""

from __future__ import annotations

import itertools
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from qbench.runtimes.kernels import gemv

SHAPES = {  # name: (N, K, calls per step)
    "q": (3584, 3584, 28), "k|v": (512, 3584, 56), "qkv fused": (4608, 3584, 28), "o": (3584, 3584, 28),
    "gate|up": (18944, 3584, 56), "gate+up fused": (37888, 3584, 28), "down": (3584, 18944, 28),
    "lm_head": (152064, 3584, 1),
}
dev = torch.device("cuda")
L2 = torch.cuda.get_device_properties(dev).L2_cache_size
SMS = torch.cuda.get_device_properties(dev).multi_processor_count


def timed(fn, copies: int) -> float:
    """Median µs per call over 20 replays of a graph of `copies` calls."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / copies)
    return statistics.median(times)


def copy_bandwidth() -> float:
    a = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        b.copy_(a)
    torch.cuda.synchronize()
    return 2 * a.numel() * 20 / (time.perf_counter() - t) / 1e12


def measure(name: str, x: torch.Tensor) -> dict:
    n, k, per_step = SHAPES[name]
    size = n * k * 2
    copies = max(2, -(-8 * L2 // size))
    weights = [torch.randn(n, k, dtype=torch.bfloat16, device=dev) * 0.02 for _ in range(copies)]
    xk = x[:, :k].contiguous()
    want = F.linear(xk.float(), weights[0].float())[0]
    row = {"N": n, "K": k, "per_step": per_step, "bytes": size, "copies": copies}
    row["cublas_us"] = timed(lambda: [F.linear(xk, w) for w in weights], copies)
    for label, setup in (("compile", {}), ("compile-cd", {"coordinate_descent_tuning": True}),
                         ("compile-autotune", "max-autotune-no-cudagraphs")):
        try:
            torch._dynamo.reset()
            if isinstance(setup, dict):
                for key, value in setup.items():
                    setattr(torch._inductor.config, key, value)
                fn = torch.compile(lambda a, w: F.linear(a, w), dynamic=False)
            else:
                fn = torch.compile(lambda a, w: F.linear(a, w), dynamic=False, mode=setup)
            began = time.perf_counter()
            fn(xk, weights[0])
            row[f"{label}_compile_s"] = round(time.perf_counter() - began, 1)
            row[f"{label}_us"] = timed(lambda f=fn: [f(xk, w) for w in weights], copies)
        except Exception as error:  # noqa: BLE001
            row[f"{label}_error"] = f"{type(error).__name__}: {str(error)[:200]}"
        finally:
            torch._inductor.config.coordinate_descent_tuning = False
    configs = {}
    for blocks in itertools.product((1, 2, 4, 8, 16), (128, 256, 512, 1024), (2, 4, 8)):
        if blocks[0] * blocks[1] > 16384:
            continue
        try:
            got = gemv.launch(xk[0], weights[0], None, blocks)
            err = ((got.float() - want).abs().max() / want.abs().max()).item()
            if err > 2e-2:
                configs[str(blocks)] = {"error": f"rel err {err:.3g}"}
                continue
            us = timed(lambda b=blocks: [gemv.launch(xk[0], w, None, b) for w in weights], copies)
            configs[str(blocks)] = {"us": us}
        except Exception as error:  # noqa: BLE001
            configs[str(blocks)] = {"error": f"{type(error).__name__}: {str(error)[:120]}"}
    ok = {c: v["us"] for c, v in configs.items() if "us" in v}
    best = min(ok, key=ok.get) if ok else None
    chosen = str(gemv.choose_blocks(n, k, SMS))
    row.update(configs=configs, best=best, best_us=ok.get(best), chosen=chosen, chosen_us=ok.get(chosen))
    return row


def main() -> None:
    only = sys.argv[1:] or list(SHAPES)
    result = {"device": torch.cuda.get_device_name(), "copy_tbs": copy_bandwidth(), "shapes": {}}
    print(f"{result['device']}: copy {result['copy_tbs']:.2f} TB/s (read + write), L2 {L2 >> 20} MiB, {SMS} SMs")
    x = torch.randn(1, 18944, dtype=torch.bfloat16, device=dev)
    for name in only:
        row = measure(name, x)
        torch.cuda.empty_cache()
        result["shapes"][name] = row

        def tbs(us, size=row["bytes"]):
            return f"{size / us / 1e6:.2f}"

        cells = [f"{name:14s} {row['N']:6d}x{row['K']:5d}", f"cuBLAS {row['cublas_us']:.1f} us {tbs(row['cublas_us'])}"]
        cells += [f"{label} {tbs(row[f'{label}_us'])}" for label in ("compile", "compile-cd", "compile-autotune")
                  if f"{label}_us" in row]
        if row["best"]:
            cells.append(f"triton best {row['best']} {row['best_us']:.1f} us {tbs(row['best_us'])}")
        if row["chosen_us"]:
            cells.append(f"chosen {row['chosen']} {tbs(row['chosen_us'])}")
        print(" | ".join(cells) + " (TB/s)", flush=True)
    with open(os.path.join(os.environ.get("OUT", "."), "gemv10.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
