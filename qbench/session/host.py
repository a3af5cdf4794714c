"""The host CPU that launches the kernels, measured: batch-1 eager decode is bound by it.

An eager decode step issues hundreds of small kernels, each launched by the host: on a fast GPU the
step takes as long as the host needs to launch them, so an eager figure means little without the
host's cost beside it. Each timed block is bracketed by a probe:

  launch_us  host time of one kernel launch. CUDA: an empty kernel (`torch.cuda._sleep(0)`, one
             thread spinning zero cycles), launched LAUNCHES_PER_BATCH times back to back, median
             over LAUNCH_BATCHES batches. CPU device: the dispatch of a one-element op instead.
  op_us      the same for a one-element torch op (`x.add_(1)`): Python, PyTorch's dispatcher and
             the launch, which is what each op of an eager step pays.
  cpu_ms     a fixed pure-Python loop (FIXED_LOOP_ITERATIONS iterations), median of 3: how fast the
             core that runs the decode loop executes the interpreter right now.
and across the block, from /proc/stat: the share of CPU time the hypervisor stole (`steal_pct`),
host-wide and on the decode loop's core. The session also records the CPU model, the worker's
affinity, and the core the decode loop was pinned to where `--cpu` asked for one (`choose_core`).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

FIXED_LOOP_ITERATIONS = 200_000
LAUNCHES_PER_BATCH = 100  # well under the CUDA launch queue's depth, so the host, not the GPU, sets the pace
LAUNCH_BATCHES = 20
CORE_PROBE_REPEATS = 3


def _fixed_loop(iterations: int = FIXED_LOOP_ITERATIONS) -> int:
    total = 0
    for i in range(iterations):
        total += i ^ (i >> 3)
    return total


def fixed_workload_ms(repeats: int = 3, reduce=statistics.median) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        _fixed_loop()
        times.append((time.perf_counter() - began) * 1e3)
    return reduce(times)


def _per_launch_us(launch, synchronize) -> float:
    per_batch = []
    for _ in range(LAUNCH_BATCHES):
        synchronize()
        began = time.perf_counter()
        for _ in range(LAUNCHES_PER_BATCH):
            launch()
        per_batch.append((time.perf_counter() - began) * 1e6 / LAUNCHES_PER_BATCH)
    synchronize()
    return statistics.median(per_batch)


def launch_costs(device: str) -> dict[str, float]:
    import torch

    if device == "cuda":
        x = torch.zeros(1, device="cuda")
        synchronize = torch.cuda.synchronize
        launch_us = _per_launch_us(lambda: torch.cuda._sleep(0), synchronize)
    else:
        x = torch.zeros(1)

        def synchronize():
            return None

        launch_us = None
    op_us = _per_launch_us(lambda: x.add_(1), synchronize)
    return {"launch_us": round(op_us if launch_us is None else launch_us, 2), "op_us": round(op_us, 2)}


def current_core() -> int | None:
    """The core the calling thread last ran on (field 39 of /proc/thread-self/stat)."""
    try:
        fields = Path("/proc/thread-self/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[36])
    except (OSError, IndexError, ValueError):
        return None


def core_mhz(core: int | None) -> float | None:
    if core is None:
        return None
    try:
        return int(Path(f"/sys/devices/system/cpu/cpu{core}/cpufreq/scaling_cur_freq").read_text()) / 1e3
    except (OSError, ValueError):
        pass
    try:
        for block in Path("/proc/cpuinfo").read_text().split("\n\n"):
            pairs = (line.split(":", 1) for line in block.splitlines() if ":" in line)
            fields = {key.strip(): value.strip() for key, value in pairs}
            if fields.get("processor") == str(core) and "cpu MHz" in fields:
                return float(fields["cpu MHz"])
    except (OSError, ValueError):
        pass
    return None


def probe(device: str) -> dict[str, Any]:
    """One host measurement: launch costs, the fixed workload, the core it ran on and its clock."""
    record: dict[str, Any] = dict(launch_costs(device))
    record["cpu_ms"] = round(fixed_workload_ms(), 2)
    record["core"] = current_core()
    record["core_mhz"] = core_mhz(record["core"])
    return record


def proc_stat() -> dict[str, Any]:
    """CPU time counters (jiffies) host-wide and per core, and the runnable processes now."""
    counters: dict[str, Any] = {}
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            name, *values = line.split()
            if name.startswith("cpu"):
                counters[name] = [int(v) for v in values]
            elif name == "procs_running":
                counters[name] = int(values[0])
    except (OSError, ValueError):
        pass
    return counters


STEAL_FIELD = 7  # user nice system idle iowait irq softirq steal guest guest_nice


def steal_pct(before: dict, after: dict, name: str = "cpu") -> float | None:
    """Share of CPU time stolen by the hypervisor between two /proc/stat readings (None: not reported)."""
    first, last = before.get(name), after.get(name)
    if not first or not last or len(first) <= STEAL_FIELD:
        return None
    # guest time is already counted in user time: leave guest and guest_nice out of the total
    total = sum(last[: STEAL_FIELD + 1]) - sum(first[: STEAL_FIELD + 1])
    if total <= 0:
        return None
    return round(100 * (last[STEAL_FIELD] - first[STEAL_FIELD]) / total, 2)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def affinity() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return []


def pin_thread(core: int) -> None:
    """Pin the calling thread (the one that runs the decode loop) to one core."""
    os.sched_setaffinity(0, {core})


def choose_core(cores: list[int]) -> tuple[int, dict[int, float]]:
    """The core that runs the fixed workload fastest now (best of CORE_PROBE_REPEATS), and each
    core's time. The calling thread is left pinned to the chosen core."""
    times = {}
    for core in cores:
        pin_thread(core)
        times[core] = round(fixed_workload_ms(CORE_PROBE_REPEATS, min), 2)
    chosen = min(times, key=times.get)
    pin_thread(chosen)
    return chosen, times


def session_host(device: str, cpu: str) -> dict[str, Any]:
    """Record the host and pin the decode loop's thread as `cpu` asks: 'off' (the default: pinning
    did not narrow the spread of eager figures on the H100 host, results/h100/README.md), 'auto'
    (the fastest of this process's cores by the fixed workload, now) or a core number."""
    allowed = affinity()
    record: dict[str, Any] = {"cpu_model": cpu_model(), "logical_cpus": os.cpu_count(), "affinity": allowed}
    try:
        record["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if cpu == "off" or not allowed:
        record["pinned_core"] = None
        record["pin_choice"] = "not pinned (--cpu off)"
        return record
    if cpu == "auto":
        core, times = choose_core(allowed)
        record["core_probe_ms"] = times
        record["pin_choice"] = f"auto: fastest of {len(allowed)} cores by the fixed workload"
    else:
        core = int(cpu)
        pin_thread(core)
        record["pin_choice"] = f"--cpu {core}"
    record["pinned_core"] = core
    return record
