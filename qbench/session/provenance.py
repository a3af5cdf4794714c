"""Where a number came from: the device, its software, its clocks, and its measured copy bandwidth."""

from __future__ import annotations

import platform
import time
from typing import Any

import torch

from qbench.backend import DeviceInfo
from qbench.specs import cpu_device_name


def device_info() -> DeviceInfo:
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(torch.cuda.current_device())
        uuid = str(getattr(properties, "uuid", "") or "")
        return DeviceInfo("cuda", properties.name, torch.cuda.get_device_capability(), uuid)
    return DeviceInfo("cpu", cpu_device_name())


def copy_bandwidth_gbps(device: str, megabytes: int | None = None, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth, counting bytes read and written (2 x size / time), best of
    `repeats`. 1 GiB on a GPU (well past any L2), 256 MiB on a CPU."""
    size = (megabytes or (1024 if device == "cuda" else 256)) * 2**20
    source = torch.empty(size, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            target.copy_(source)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            began = time.perf_counter()
            target.copy_(source)
            seconds = time.perf_counter() - began
        best = min(best, seconds)
    return 2 * size / best / 1e9


def nvml_state() -> dict[str, Any]:
    """Clocks, power, temperature and throttle reasons through NVML, where nvidia-ml-py is installed."""
    try:
        import pynvml
    except ImportError:
        return {"nvml": "unavailable: pip install nvidia-ml-py"}
    try:
        pynvml.nvmlInit()
        index = torch.cuda.current_device()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        state = {
            "uuid": pynvml.nvmlDeviceGetUUID(handle),
            "driver": pynvml.nvmlSystemGetDriverVersion(),
            "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "mem_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            "max_sm_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000,
            "temperature_c": pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
            "throttle_reasons": int(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)),
        }
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in state.items()}
    except Exception as error:  # NVML absent in some containers: say so, never guess
        return {"nvml": f"unavailable: {error}"}


def software() -> dict[str, Any]:
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "host": platform.node(),
    }


def collect(device: str) -> dict[str, Any]:
    info = device_info()
    record: dict[str, Any] = {"device": info.name, **software()}
    if device == "cuda":
        record["capability"] = ".".join(map(str, info.capability))
        record.update(nvml_state())
    record["copy_bandwidth_gbps"] = round(copy_bandwidth_gbps(device), 1)
    return record
