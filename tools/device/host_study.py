"""Which host controls narrow the spread of eager batch-1 decode (trust issue, item 2). Developer tooling
for the GPU host, not part of qbench.

Each of N fresh processes loads qwen2.5-7b with bf16 (synthetic weights, as `qbench compare` does),
runs one untimed block, then times one eager block (ctx 2048, 5 warm-up + 30 steps) per setting, in a
random order, with qbench's own `timed_block` (host probes before and after):

    unpinned+gc    the decode thread free to run on any core, Python's GC on   (qbench before)
    unpinned+nogc  free to move, GC kept out of the timed steps
    pinned+gc      pinned to the fastest core by the fixed workload, GC on
    pinned+nogc    pinned and GC off         (what qbench did while this study ran; see results/h100/)

The spread of a setting across processes (max/min of the per-process medians) is what the issue is
about; the paired design (every setting in every process) separates the setting from the process.

    python3 tools/device/host_study.py --sessions 6 --out results.jsonl     # runs, then summarises
    python3 tools/device/host_study.py --summary results.jsonl               # summary only
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time

SETTINGS = ("unpinned+gc", "unpinned+nogc", "pinned+gc", "pinned+nogc")


def child(seed: int) -> dict:
    from qbench.backend import LoadOptions
    from qbench.registry import load_backend
    from qbench.session import host
    from qbench.session.decode import DecodeSettings, run_block, token_stream
    from qbench.session.positions import cache_positions
    from qbench.session.run import timed_block
    from qbench.specs import load_model_spec

    began = time.perf_counter()
    spec = load_model_spec("qwen2.5-7b")
    settings = DecodeSettings(ctx=2048, warmup=5, steps=30)
    options = LoadOptions(device="cuda", max_cache_len=cache_positions(2048, 5, 30))
    runner = load_backend("bf16").load(spec, options)
    tokens = token_stream(spec.vocab_size, settings.positions, 0, "cuda")
    run_block(runner, settings, tokens, graphs=False)  # as the session's reference block: untimed
    cores = host.affinity()
    record = {"pid": os.getpid(), "cpu_model": host.cpu_model(), "cores": cores, "load_s": time.perf_counter() - began}
    order = list(SETTINGS)
    random.Random(seed).shuffle(order)
    record["order"] = order
    for name in order:
        if name.startswith("pinned"):
            core, times = host.choose_core(cores)
            record[f"{name}:core_probe_ms"] = times
        else:
            os.sched_setaffinity(0, set(cores))
        if name.endswith("+nogc"):  # Python's collector kept out of the warm-up and timed steps
            gc.collect()
            gc.disable()
        try:
            timed, measured = timed_block(runner, settings, tokens, False, "cuda")
        finally:
            gc.enable()
        record[name] = {
            "event_ms": statistics.median(timed.event_ms),
            "wall_ms": statistics.median(timed.wall_ms),
            "cv": statistics.stdev(timed.event_ms) / statistics.mean(timed.event_ms),
            **measured,
        }
    return record


def summary(records: list[dict]) -> str:
    lines = [
        f"{len(records)} processes; CPU {records[0]['cpu_model']}, {len(records[0]['cores'])} cores",
        "",
        "| setting | per-process median ms (in run order) | median | max/min | CV across processes "
        "| median in-block CV | launch us (median) | cpu_ms (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in SETTINGS:
        medians = [r[name]["event_ms"] for r in records]
        launch = [r[name]["host"][w]["launch_us"] for r in records for w in ("before", "after")]
        cpu = [r[name]["host"][w]["cpu_ms"] for r in records for w in ("before", "after")]
        cv = statistics.stdev(medians) / statistics.mean(medians) if len(medians) > 1 else 0.0
        lines.append(
            f"| {name} | {', '.join(f'{m:.2f}' for m in medians)} | {statistics.median(medians):.2f} "
            f"| {max(medians) / min(medians):.2f} | {cv:.1%} | {statistics.median(r[name]['cv'] for r in records):.1%} "
            f"| {statistics.median(launch):.1f} | {statistics.median(cpu):.1f} |"
        )
    lines += ["", "Per process: fixed workload (ms) by core when choosing the pinned core, and the core chosen:"]
    for r in records:
        probe = r.get("pinned+nogc:core_probe_ms", {})
        if probe:
            times = sorted(probe.values())
            fastest = min(probe, key=probe.get)
            lines.append(f"- pid {r['pid']}: fastest core {fastest} {times[0]:.1f} ms, slowest {times[-1]:.1f} ms")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--out", default="host-study.jsonl")
    parser.add_argument("--summary")
    parser.add_argument("--child", type=int)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child)), flush=True)
        return
    if args.summary:
        print(summary([json.loads(line) for line in open(args.summary)]))
        return
    with open(args.out, "w") as out:
        for seed in range(args.sessions):
            done = subprocess.run([sys.executable, __file__, "--child", str(seed)], capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
                continue
            out.write(done.stdout.strip().splitlines()[-1] + "\n")
            out.flush()
            print(f"process {seed + 1}/{args.sessions} done", file=sys.stderr, flush=True)
    print(summary([json.loads(line) for line in open(args.out)]))


if __name__ == "__main__":
    main()
