"""Device side (issue 25): batch-1 4-bit GEMV read rates on Qwen2.5-7B's decoder shapes, one run, for
qbench-int4 (every block configuration of a small sweep, on Hopper each with and without the bf16x2
variant, the best printed per shape), tinygemm
(torch-int4), gemlite A16W4 g128 (gemlite-int4), Marlin (awq-marlin), ExLlamaV2 (gptq-exllamav2) and
qbench's bf16 GEMV. Each library runs through its qbench backend (the same quantiser, repacking and
call a decode step makes); a backend that cannot run here (package missing, kernel build failing) is
skipped with a line, never a crash.

Each figure: one CUDA graph of CALLS back-to-back calls, call i on weight copy i % copies (together
over 8x the L2, so no call finds its weight in L2), replayed REPLAYS times; the median replay / CALLS.
Effective TB/s = the bytes the kernel must read (the backend's `linear_bytes`; bf16: N*K*2) / time.

    python tools/device/int4_shapes.py OUT.json [shape ...]     # on a GPU
    TRITON_INTERPRET=1 python tools/device/int4_shapes.py --tiny OUT.json   # CPU: the plumbing only
    QUICK=1 (a 48-configuration sweep), WIDE=1 (108 configurations past QUICK's edges), SMALL=1 (few
    rows a program and no split or two, for q/k/v and o: no split-K tail, or a short one),
    LIBS=tinygemm,gemlite (only these libraries beside qbench's; LIBS=none: qbench's kernels only),
    PATHS=bf16x2 (on Hopper, the bf16x2 variant's configurations only), TILES=0,1,2 (each
    configuration with these loops: gemv_int4's "Tiles"; default 0, its per-group loads), STAGES=1,3,4
    (each tile-1 configuration with these pipeline depths: gemv_int4's "Stages"; default 1), WARPS=4
    (only these warp counts), TABLE_ONLY=1 (qbench-int4's chosen configuration alone: the
    libraries' columns beside the table a sweep wrote), FOLD=1 (qbench-int4's and qbench-bf16's chosen
    configurations alone, each shape plain and in each form lean's QBENCH_LEAN_FOLD=on calls it with,
    and that form's parts: what the fold costs each GEMV, shape by shape)
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from qbench.api import DeviceInfo
from qbench.registry import load_backend
from qbench.runtimes.kernels import gemv, gemv_int4

GROUP = 128
SHAPES = {  # name: (N, K, calls per step) for Qwen2.5-7B: hidden 3584, intermediate 18944, 28 q / 4 kv heads
    "qkv fused": (4608, 3584, 28), "o": (3584, 3584, 28), "gate+up fused": (37888, 3584, 28),
    "down": (3584, 18944, 28),
}
TINY = {"qkv fused": (96, 512, 1), "down": (48, 640, 1)}  # --tiny: small enough for the interpreter
LIBRARIES = {  # label: qbench backend
    "tinygemm": "torch-int4", "gemlite": "gemlite-int4", "marlin": "awq-marlin", "exllamav2": "gptq-exllamav2",
}
CALLS, REPLAYS = 100, 10
SWEEP = {"block_n": (8, 16, 32, 64), "groups": (1, 2, 4), "split": (1, 2, 3, 4, 5, 6, 8), "warps": (1, 2, 4, 8)}
QUICK = {"block_n": (16, 32, 64), "groups": (2, 4), "split": (1, 2, 4, 8), "warps": (2, 4)}  # QUICK=1
# WIDE=1: past QUICK's edges, where its winners sat (split 8, 64 rows, 4 groups an iteration)
WIDE = {"block_n": (32, 64, 128), "groups": (2, 4, 8), "split": (4, 8, 12, 16), "warps": (2, 4, 8)}
# SMALL=1: the small shapes without split-K's tail (atomics, the arrival counter, the last program's
# exchange): 2-8 rows a program, each walking all of K, or half of it. Why: a line through the split
# shapes' µs against their bytes (results/h100/step8 foldparts: o 6.8 µs for 6.7 MB, down 17.2 for
# 35.4) is 4.4 µs a call plus 2.76 TB/s, and q/k/v (7.6 for 8.7 MB) sits on it; gate+up, unsplit (28.1
# for 70.9), sits 2.4 µs a call above that rate. Unsplit, step5's and step8's sweeps ran faster the
# fewer the rows (q/k/v: 64 -> 32 -> 16 rows, 13.0 -> 9.5 -> 8.5 µs) and never tried fewer than 16.
SMALL = {"block_n": (2, 4, 8), "groups": (4, 8), "split": (1, 2), "warps": (1, 2)}
if os.environ.get("QUICK") == "1":
    SWEEP = QUICK
if os.environ.get("WIDE") == "1":
    SWEEP = WIDE
if os.environ.get("SMALL") == "1":
    SWEEP = SMALL
if os.environ.get("WARPS"):  # e.g. WARPS=4: only these
    SWEEP = dict(SWEEP, warps=tuple(int(w) for w in os.environ["WARPS"].split(",")))
if os.environ.get("LIBS"):  # e.g. LIBS=tinygemm,gemlite: leave out the ones whose kernels build first
    LIBRARIES = {k: v for k, v in LIBRARIES.items() if k in os.environ["LIBS"].split(",")}


def device_info(dev: torch.device) -> DeviceInfo:
    if dev.type != "cuda":
        return DeviceInfo("cpu", "cpu")
    props = torch.cuda.get_device_properties(dev)
    return DeviceInfo("cuda", props.name, (props.major, props.minor))


def timed(calls: list, dev: torch.device) -> float:
    """Median µs per call: a CUDA graph of the calls, replayed REPLAYS times (CPU: one wall-clock pass)."""
    if dev.type != "cuda":
        began = time.perf_counter()
        for call in calls:
            call()
        return (time.perf_counter() - began) * 1e6 / len(calls)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            for call in calls:
                call()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    times = []
    for _ in range(REPLAYS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / len(calls))
    del graph
    return statistics.median(times)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float().reshape(-1) - want).norm() / want.norm()).item()


def copies_for(size: int, l2: int, tiny: bool = False) -> int:
    """Weight copies to cycle through: together over 8x the L2, so no call finds its weight there."""
    return 2 if tiny else max(2, -(-8 * l2 // size))


def bf16_linear(weight: torch.Tensor) -> torch.nn.Linear:
    """A bias-free bf16 nn.Linear holding `weight` [N, K] (what the backends quantise)."""
    n, k = weight.shape
    linear = torch.nn.Linear(k, n, bias=False, device=weight.device, dtype=torch.bfloat16)
    with torch.no_grad():
        linear.weight.copy_(weight)
    return linear


def modules_for(backend, linear: torch.nn.Linear, copies: int) -> list:
    first = backend.quantize_linear(linear, GROUP)
    first.release_reference()
    out = [first]
    for _ in range(copies - 1):
        try:
            out.append(copy.deepcopy(first))
        except Exception:  # noqa: BLE001 - a kernel object that does not deep-copy: quantise again
            module = backend.quantize_linear(linear, GROUP)
            module.release_reference()
            out.append(module)
    return out


# FOLD=1: the forms lean's fold calls each shape's GEMV in (`gemv.gemv`'s arguments), and their parts
FOLD_FORMS = {
    "qkv fused": {"rms": ("rms",), "parts": ("parts",)},
    "gate+up fused": {"rms": ("rms",), "silu": ("silu",), "rms+silu": ("rms", "silu"), "parts+silu": ("parts", "silu")},
    "o": {"residual": ("residual",), "residual+scale_out": ("residual", "scale_out"),
          "residual+scale_out+squares": ("residual", "scale_out", "squares")},
    "down": {"residual": ("residual",), "residual+scale_out": ("residual", "scale_out"),
             "residual+scale_out+squares": ("residual", "scale_out", "squares")},
}
INT4_ONLY = ("parts", "squares")  # qbench-int4's own forms (`gemv_int4.launch`): the bf16 GEMV has no such arguments


def fold_costs(name: str, n: int, k: int, dev: torch.device, l2: int, sms: int, calls: int) -> dict:
    """µs a call of each GEMV (qbench-int4's table entry, qbench's bf16 GEMV) plain and in each of
    FOLD_FORMS[name], on the same weight copies, one after another."""
    torch.manual_seed(0)
    weight = torch.randn(n, k, dtype=torch.bfloat16, device=dev) * 0.02
    x, h = torch.randn(k, dtype=torch.bfloat16, device=dev), torch.randn(k, dtype=torch.bfloat16, device=dev)
    r, g = torch.randn(n, dtype=torch.bfloat16, device=dev), torch.randn(n, dtype=torch.bfloat16, device=dev)
    sums = h.float().view(-1, 32).pow(2).sum(1)  # h's sums of squares, one a block of 32 rows as o and down store them
    parts = {
        "rms": {"rms": h, "eps": 1e-6}, "silu": {"silu": True}, "residual": {"residual": r},
        "scale_out": {"scale_out": g}, "parts": {"rms": sums, "rms_parts": True, "eps": 1e-6},
        "squares": {"squares": True},
    }
    forms = {"plain": ()} | FOLD_FORMS.get(name, {})
    backend = load_backend("qbench-int4")
    mods = modules_for(backend, bf16_linear(weight), copies_for(backend.linear_bytes(k, n, GROUP), l2))
    blocks = gemv_int4.choose_blocks(n, k, sms, GROUP, gemv_int4.hopper(dev))
    bf16_blocks = gemv.choose_blocks(n, k, sms)
    weights = [weight.clone() for _ in range(copies_for(n * k * 2, l2))]
    out = {"qbench-int4": {"blocks": str(blocks)}, "qbench-bf16": {"blocks": str(bf16_blocks)}}
    for form, names in forms.items():
        kwargs = {key: value for part in names for key, value in parts[part].items()}

        def int4(m, kw=kwargs):
            return gemv_int4.gemv_int4(x, m.qweight, m.scales, m.zeros, None, GROUP, *blocks, **kw)

        out["qbench-int4"][form] = timed([lambda m=mods[i % len(mods)]: int4(m) for i in range(calls)], dev)

        def bf16(w, kw=kwargs):
            return gemv.gemv(x, w, None, *bf16_blocks, **kw)

        if any(part in INT4_ONLY for part in names):
            continue
        out["qbench-bf16"][form] = timed([lambda w=weights[i % len(weights)]: bf16(w) for i in range(calls)], dev)
    del mods, weights
    return out


def measure(name: str, n: int, k: int, dev: torch.device, l2: int, sms: int, tiny: bool) -> dict:
    torch.manual_seed(0)
    weight = torch.randn(n, k, dtype=torch.bfloat16, device=dev) * 0.02
    x = torch.randn(1, k, dtype=torch.bfloat16, device=dev)
    want = F.linear(x.float(), weight.float())[0]
    row: dict = {"N": n, "K": k}
    info = device_info(dev)
    calls = 4 if tiny else CALLS
    # qbench's bf16 GEMV (lean's 16-bit path), its chosen blocks
    size = n * k * 2
    weights = [weight.clone() for _ in range(copies_for(size, l2, tiny))]
    blocks = gemv.choose_blocks(n, k, sms)
    try:
        err = rel_err(gemv.launch(x[0], weights[0], None, blocks), want)
        us = timed([lambda w=weights[i % len(weights)]: gemv.launch(x[0], w, None, blocks) for i in range(calls)], dev)
        row["qbench-bf16"] = {"us": us, "bytes": size, "tbs": size / us / 1e6, "blocks": str(blocks), "rel_err": err}
    except Exception as error:  # noqa: BLE001
        row["qbench-bf16"] = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
    del weights

    linear = bf16_linear(weight)

    # qbench-int4: the sweep (its own kernel, straight through gemv_int4.launch)
    backend = load_backend("qbench-int4")
    size = backend.linear_bytes(k, n, GROUP)
    reason = backend.unavailable_reason(info) if dev.type == "cuda" else None  # --tiny: the interpreter runs it
    if reason:
        row["qbench-int4"] = {"skipped": reason}
    else:
        mods = modules_for(backend, linear, copies_for(size, l2, tiny))
        configs = {}
        hopper = gemv_int4.hopper(dev)  # the bf16x2 variant (inline PTX for sm_90) can run here
        candidates = [gemv_int4.choose_blocks(n, k, sms, GROUP, hopper)]
        if not tiny and os.environ.get("TABLE_ONLY") != "1":
            swept = list(itertools.product(*SWEEP.values()))
            if hopper:  # PATHS=bf16x2: the variant's configurations only
                swept = ([] if os.environ.get("PATHS") == "bf16x2" else swept) + [c + (True,) for c in swept]
            # TILES=1,2: each configuration with those loops instead (gemv_int4's "Tiles"; 0: its own)
            tiles = [int(t) for t in os.environ.get("TILES", "0").split(",")]
            swept = [c if not t else c + (t,) if len(c) == 5 else c + (False, t) for c in swept for t in tiles]
            # STAGES=1,3,4: each tile-1 configuration with Triton's pipelining of those depths (gemv_int4's "Stages")
            depths = [int(d) for d in os.environ.get("STAGES", "1").split(",")]
            swept = [c + (d,) if d > 1 else c for c in swept for d in (depths if c[5:6] == (1,) else [1])]
            candidates += [c for c in swept if c not in candidates]
        total = k // GROUP
        for blocks in candidates:
            if blocks[2] > 1 and total // blocks[2] < blocks[1]:
                continue  # a split without a whole iteration of groups

            def call(m, b=blocks):
                return gemv_int4.launch(x[0], m.qweight, m.scales, m.zeros, None, GROUP, b)

            try:
                err = rel_err(call(mods[0]), want)
                if err > 0.2:
                    configs[str(blocks)] = {"error": f"rel err {err:.3g}"}
                    continue
                us = timed([lambda m=mods[i % len(mods)]: call(m) for i in range(calls)], dev)
                configs[str(blocks)] = {"us": us, "tbs": size / us / 1e6, "rel_err": err}
            except Exception as error:  # noqa: BLE001
                configs[str(blocks)] = {"error": f"{type(error).__name__}: {str(error)[:160]}"}
        ok = {c: v["us"] for c, v in configs.items() if "us" in v}
        best = min(ok, key=ok.get) if ok else None
        chosen = str(candidates[0])
        row["qbench-int4"] = {
            "bytes": size, "configs": configs, "best": best, "us": ok.get(best),
            "tbs": size / ok[best] / 1e6 if best else None, "chosen": chosen, "chosen_us": ok.get(chosen),
        }
        del mods

    # the libraries, each through its qbench backend
    for label, backend_name in LIBRARIES.items():
        try:
            backend = load_backend(backend_name)
        except Exception as error:  # noqa: BLE001
            row[label] = {"skipped": f"backend {backend_name}: {type(error).__name__}: {str(error)[:160]}"}
            continue
        reason = backend.unavailable_reason(info)
        if reason:
            row[label] = {"skipped": f"{backend_name}: {reason}"}
            continue
        try:
            backend.prepare(dev.type)
            dtype = getattr(torch, backend.compute_dtype)
            lin = copy.deepcopy(linear).to(dtype)
            xs = x.to(dtype)
            size = backend.linear_bytes(k, n, GROUP)
            mods = modules_for(backend, lin, copies_for(size, l2, tiny))
            err = rel_err(mods[0](xs), want)
            us = timed([lambda m=mods[i % len(mods)], a=xs: m(a) for i in range(calls)], dev)
            row[label] = {"backend": backend_name, "us": us, "bytes": size, "tbs": size / us / 1e6, "rel_err": err}
            del mods
        except Exception as error:  # noqa: BLE001
            row[label] = {"backend": backend_name, "error": f"{type(error).__name__}: {str(error)[:200]}"}
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return row


def print_row(shape: str, n: int, k: int, row: dict, columns: list) -> None:
    """A sweep's line for one shape (effective TB/s a column), the best and chosen configurations, and
    why a column is empty."""
    cells = []
    for c in columns:
        tbs = row.get(c, {}).get("tbs")
        cells.append(f"{tbs:13.2f}" if tbs else f"{'-':>13s}")
    print(f"{shape + f' {n}x{k}':24s}" + "".join(cells), flush=True)
    mine = row["qbench-int4"]
    if mine.get("best"):
        chosen = mine["chosen_us"]
        print(f"    qbench-int4 best {mine['best']} {mine['us']:.1f} us; chosen {mine['chosen']} "
              + (f"{chosen:.1f} us" if chosen else "failed"))
    for c in columns:
        why = row.get(c, {}).get("skipped") or row.get(c, {}).get("error")
        if why:
            print(f"    {c}: {why}")


def main() -> None:
    args = sys.argv[1:]
    tiny = "--tiny" in args
    args = [a for a in args if a != "--tiny"]
    if not args:
        sys.exit("usage: int4_shapes.py [--tiny] OUT.json [shape ...]")
    out, only = args[0], args[1:]
    shapes = TINY if tiny else SHAPES
    dev = torch.device("cpu" if tiny and not torch.cuda.is_available() else "cuda")
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        l2, sms, name = props.L2_cache_size, props.multi_processor_count, props.name
    else:
        l2, sms, name = 0, 8, "cpu (Triton interpreter: plumbing only, times mean nothing)"
    result = {"device": name, "group_size": GROUP, "calls": CALLS, "replays": REPLAYS, "shapes": {}}
    print(f"{name}: {sms} SMs, L2 {l2 >> 20} MiB; effective TB/s = bytes the kernel must read / median time")
    columns = ["qbench-int4", *LIBRARIES, "qbench-bf16"]
    folds = os.environ.get("FOLD") == "1"
    if not folds:
        print(f"{'shape':24s}" + "".join(f"{c:>13s}" for c in columns))
    for shape in only or list(shapes):
        n, k, _ = shapes[shape]
        if folds:
            result["shapes"][shape] = row = fold_costs(shape, n, k, dev, l2, sms, 4 if tiny else CALLS)
            for kernel, times in row.items():
                print(f"{shape + f' {n}x{k}':24s} {kernel:12s} {times['blocks']:32s} "
                      + "  ".join(f"{form} {us:.1f}" for form, us in times.items() if form != "blocks"), flush=True)
        else:
            result["shapes"][shape] = row = measure(shape, n, k, dev, l2, sms, tiny)
            print_row(shape, n, k, row, columns)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        with open(out, "w") as f:  # after every shape: a call cut short keeps what it measured
            json.dump(result, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
