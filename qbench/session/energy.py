"""Energy around a timed block, and the device memory a step's processes hold: each read one way for
every runtime, with its source named, so cells compare.

Energy. On an NVIDIA GPU, NVML's total-energy counter (millijoules since the driver loaded; Volta
and later) is read before the first timed step and after the last; J/token = the difference / the
timed steps, mean W = the difference / the block's wall time. The counter counts in mJ but the
driver refreshes it only every so often (results/h100/formats8/README.md: the H100's interval): `counter_update_ms`
measures that interval once per session (the counter is polled until it has moved a few times).
A window shorter than COARSE_UPDATES refreshes gives no figure ("not measured", with why): at the
H100's interval, a block needs about a second of timed steps (more --steps) for a J/token figure. Where the counter
is missing, the board's power is sampled every POWER_SAMPLE_S in a thread and integrated. On a CPU, Linux's
RAPL package counter (microjoules) where it can be read, else nothing: "not measured".

Memory. The common figure is the GPU memory NVML lists for the processes that run the step (the
worker for hf and lean; the engine's own process for llama.cpp), CUDA context included, read right
after the timed steps. Where NVML cannot see those processes (a PID namespace hides them) the figure
is the device's used memory less what it used before the worker made its context, and the source
says so. torch's allocator peak stays beside it where there is one; the report compares only this.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COARSE_UPDATES = 10  # a window shorter than this many counter refreshes gives no energy figure
POWER_SAMPLE_S = 0.005
RAPL = Path("/sys/class/powercap/intel-rapl:0")


def _nvml_handle(index: int):
    import pynvml

    pynvml.nvmlInit()
    return pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)


@dataclass
class Reading:
    joules: float | None  # None: no counter, the meter integrates power itself
    at: float  # time.perf_counter()


class EnergyMeter:
    """Reads one device's energy; `source` says how (or why not: then `available` is False)."""

    source = "not measured"
    resolution = ""
    available = False
    counter_update_ms: float | None = None

    def start(self) -> Reading:
        return Reading(None, time.perf_counter())

    def joules_since(self, begin: Reading) -> float | None:
        return None


class NvmlCounter(EnergyMeter):
    available = True

    def __init__(self, pynvml, handle):
        self.pynvml, self.handle = pynvml, handle
        self.source = "NVML total energy counter (nvmlDeviceGetTotalEnergyConsumption)"
        self.counter_update_ms = self._update_interval_ms()
        refresh = f", refreshed every {self.counter_update_ms:.1f} ms (measured)" if self.counter_update_ms else ""
        self.resolution = f"1 mJ counter{refresh}"

    def _read(self) -> float:
        return self.pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1e3

    def _update_interval_ms(self, changes: int = 4, limit_s: float = 1.0) -> float | None:
        """Mean time between the counter's refreshes: poll it until it has moved `changes` times."""
        began = time.perf_counter()
        last, moved_at = self._read(), []
        while len(moved_at) < changes + 1 and time.perf_counter() - began < limit_s:
            value = self._read()
            if value != last:
                moved_at.append(time.perf_counter())
                last = value
        if len(moved_at) < 2:
            return None
        return 1e3 * (moved_at[-1] - moved_at[0]) / (len(moved_at) - 1)

    def start(self) -> Reading:
        return Reading(self._read(), time.perf_counter())

    def joules_since(self, begin: Reading) -> float | None:
        return self._read() - begin.joules


class NvmlPower(EnergyMeter):
    """Board power sampled in a thread and integrated, where the energy counter is missing."""

    available = True

    def __init__(self, pynvml, handle):
        self.pynvml, self.handle = pynvml, handle
        self.source = f"NVML board power sampled every {POWER_SAMPLE_S * 1e3:.0f} ms, integrated"
        self.resolution = "power readings in mW, averaged by the driver"
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            watts = self.pynvml.nvmlDeviceGetPowerUsage(self.handle) / 1e3
            self._samples.append((time.perf_counter(), watts))
            self._stop.wait(POWER_SAMPLE_S)

    def start(self) -> Reading:
        self._samples, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return Reading(None, time.perf_counter())

    def joules_since(self, begin: Reading) -> float | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return integrate(self._samples)


class RaplCounter(EnergyMeter):
    """Linux RAPL: the CPU package's energy counter in microjoules, wrapping at its range."""

    available = True

    def __init__(self, folder: Path = RAPL):
        self.file = folder / "energy_uj"
        self.range = int((folder / "max_energy_range_uj").read_text())
        int(self.file.read_text())  # readable now, or the constructor fails
        self.source = f"RAPL package counter ({self.file})"
        self.resolution = "1 uJ counter"

    def start(self) -> Reading:
        return Reading(float(int(self.file.read_text())), time.perf_counter())

    def joules_since(self, begin: Reading) -> float | None:
        now = int(self.file.read_text())
        return ((now - int(begin.joules)) % self.range) / 1e6


def integrate(samples: list[tuple[float, float]]) -> float | None:
    """Joules from (time s, watts) samples by the trapezoid rule; None with fewer than two."""
    if len(samples) < 2:
        return None
    return sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(samples, samples[1:], strict=False))


def energy_meter(device: str, index: int = 0) -> tuple[EnergyMeter, str]:
    """The best meter for `device`, and '' or why none could be had (then a meter that measures nothing)."""
    if device == "cuda":
        try:
            pynvml, handle = _nvml_handle(index)
        except Exception as error:  # no nvidia-ml-py, or no NVML in this container
            return EnergyMeter(), f"not measured: NVML unavailable ({type(error).__name__}: {str(error)[:80]})"
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            return NvmlCounter(pynvml, handle), ""
        except Exception:
            pass
        try:
            pynvml.nvmlDeviceGetPowerUsage(handle)
            return NvmlPower(pynvml, handle), ""
        except Exception as error:
            return EnergyMeter(), f"not measured: NVML has neither an energy counter nor power ({error})"
    try:
        return RaplCounter(), ""
    except (OSError, ValueError) as error:
        return EnergyMeter(), f"not measured: RAPL not readable here ({type(error).__name__})"


def block_energy(joules: float | None, tokens: int, seconds: float, meter: EnergyMeter, over: str) -> dict[str, Any]:
    """Energy fields of a window of `tokens` decode steps: J/token and mean W, or why not measured.
    A window shorter than COARSE_UPDATES refreshes of the counter gives no figure: its error would
    be as large as the figure."""
    if joules is None or not meter.available:
        return {"energy": meter.source if not meter.available else "not measured: too few power samples"}
    window_ms = seconds * 1e3
    if meter.counter_update_ms and window_ms < COARSE_UPDATES * meter.counter_update_ms:
        return {
            "energy": f"not measured: {over} took {window_ms:.0f} ms, fewer than {COARSE_UPDATES} refreshes of "
            f"the counter (every {meter.counter_update_ms:.0f} ms)",
            "energy_window_ms": round(window_ms, 2),
        }
    return {
        "energy_j": round(joules, 4),
        "j_per_token": joules / tokens,
        "mean_w": joules / seconds if seconds > 0 else None,
        "energy_window_ms": round(window_ms, 2),
        "energy_over": over,
    }


def device_used_mib(index: int = 0) -> float | None:
    """The whole device's used memory by NVML, in MiB (None where NVML is unavailable)."""
    try:
        pynvml, handle = _nvml_handle(index)
        return pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
    except Exception:
        return None


def process_memory(pids: list[int], baseline_used_mib: float | None, index: int = 0) -> dict[str, Any]:
    """GPU memory held by `pids` (NVML per process, CUDA context included), or the device's used
    memory less `baseline_used_mib` where NVML does not list them; with the source named."""
    try:
        pynvml, handle = _nvml_handle(index)
        listed = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except Exception as error:
        return {"gpu_memory_source": f"not measured: NVML unavailable ({type(error).__name__})"}
    held = {p.pid: p.usedGpuMemory for p in listed if p.usedGpuMemory is not None}
    ours = [held[pid] for pid in pids if pid in held]
    if len(ours) == len(pids):
        return {
            "gpu_memory_mib": round(sum(ours) / 2**20, 1),
            "gpu_memory_source": "NVML per process (CUDA context included)",
        }
    used = device_used_mib(index)
    if used is None or baseline_used_mib is None:
        return {"gpu_memory_source": "not measured: NVML lists none of the step's processes"}
    return {
        "gpu_memory_mib": round(used - baseline_used_mib, 1),
        "gpu_memory_source": "NVML device used less before the session (processes hidden from NVML)",
    }


def step_pids(runner) -> list[int]:
    """The processes that run the step: the runner's own where it says (an engine's), else this one."""
    return list(getattr(runner, "step_pids", None) or [os.getpid()])
