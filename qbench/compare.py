"""`qbench compare`: plan the sessions, run each in a fresh worker, store every result.

Sessions run round-robin (session 1 of every backend, then session 2, ...) so slow drift of the
machine spreads over all backends instead of landing on one.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qbench.backend import DeviceInfo
from qbench.errors import UserError
from qbench.registry import backend_names, load_backend
from qbench.specs import GpuSpec, gpu_for_device, load_gpu_spec, load_model_spec
from qbench.store import DEFAULT_DB, Store
from qbench.worker import run_worker

GRAPHS_CHOICES = ("off", "on", "both", "auto")


@dataclass(frozen=True)
class CompareConfig:
    model: str = "smollm2-135m"
    gpu: str = "auto"
    backends: tuple[str, ...] = ("available",)
    ctx: tuple[int, ...] = (512,)
    graphs: str = "auto"
    sessions: int = 0  # 0 = auto: AB_SESSIONS where a graphs A/B runs, else 1 (see sessions_for)
    warmup: int = 5
    steps: int = 30
    weights: str = "synthetic"
    group_size: int = 0  # 0 = auto: 128 where the model's shapes allow it (see resolve_group_size)
    seed: int = 0
    timeout: float = 900.0
    db: str = str(DEFAULT_DB)
    resume: bool = False
    rounds: int = 1

    def __post_init__(self):
        def bad(name: str, allowed: str):
            raise UserError(f"--{name.replace('_', '-')} must be {allowed}, got {getattr(self, name)!r}")

        if self.graphs not in GRAPHS_CHOICES:
            bad("graphs", " | ".join(GRAPHS_CHOICES))
        if not self.ctx or any(c < 1 for c in self.ctx):
            bad("ctx", "one or more positive integers")
        if self.sessions < 0:
            bad("sessions", "a positive integer (or 0 for auto)")
        if self.steps < 1 or self.warmup < 0:
            bad("steps" if self.steps < 1 else "warmup", "a positive integer (warmup may be 0)")
        if self.group_size not in (0, 32, 64, 128, 256):
            bad("group_size", "one of 32, 64, 128, 256 (or 0 for auto)")
        if self.timeout <= 0:
            bad("timeout", "a positive number of seconds")
        if self.rounds < 1:
            bad("rounds", "a positive integer")


@dataclass
class Plan:
    config: CompareConfig
    device: DeviceInfo
    gpu: GpuSpec
    backends: list[str]
    group_size: int = 128
    skipped: dict[str, str] = field(default_factory=dict)  # backend -> why it does not run here
    sessions: int = 1


def resolve_group_size(requested: int, spec) -> int:
    """128 (what published AWQ/GPTQ checkpoints use) unless some layer's in_features forbids it; then
    the largest of 64, 32 that divides them all. An explicit size that does not fit is an error."""
    in_features = {k for _, k, _, _ in spec.linear_shapes()}
    if requested:
        misfit = sorted(k for k in in_features if k % requested)
        if misfit:
            raise UserError(
                f"--group-size {requested} does not divide in_features {misfit} of {spec.name}",
                "use --group-size 0 (auto) or a size that divides them",
            )
        return requested
    for size in (128, 64, 32):
        if all(k % size == 0 for k in in_features):
            return size
    raise UserError(f"no group size of 128, 64 or 32 divides the in_features of {spec.name}")


def probe_device() -> DeviceInfo:
    """Ask a child process, so the parent never holds a CUDA context while workers run."""
    code = "import json; from qbench.provenance import device_info; print(json.dumps(device_info().__dict__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise UserError("could not query the device: " + (out.stderr.strip().splitlines() or ["?"])[-1])
    data = json.loads(out.stdout.strip().splitlines()[-1])
    capability = tuple(data["capability"]) if data["capability"] else None
    return DeviceInfo(data["kind"], data["name"], capability)


def resolve_gpu(requested: str, device: DeviceInfo) -> GpuSpec:
    detected = gpu_for_device(device.name if device.kind == "cuda" else "cpu")
    if requested == "auto":
        return detected
    wanted = load_gpu_spec(requested)
    if wanted.name != detected.name:
        seen = device.name if device.kind == "cuda" else "no CUDA GPU (cpu)"
        raise UserError(
            f"--gpu {requested} does not match this machine: detected {seen}",
            f"run on a {wanted.description} or use --gpu auto",
        )
    return wanted


def plan(config: CompareConfig, device: DeviceInfo | None = None) -> Plan:
    spec = load_model_spec(config.model)  # fail early on an unknown model
    group_size = resolve_group_size(config.group_size, spec)
    device = device or probe_device()
    gpu = resolve_gpu(config.gpu, device)
    wanted = backend_names() if config.backends == ("available",) else list(config.backends)
    result = Plan(config, device, gpu, [], group_size, sessions=sessions_for(config, device))
    for name in wanted:
        backend = load_backend(name)  # unknown names fail here, before any session runs
        reason = backend.unavailable_reason(device)
        if reason:
            result.skipped[name] = reason
        else:
            result.backends.append(name)
    return result


# Sessions per cell when a run A/B-tests CUDA graphs and --sessions is left at auto: from 10 sessions
# up the intervals are BCa bootstrap (the research's N = 10); below that they cover too little.
AB_SESSIONS = 10


def sessions_for(config: CompareConfig, device: DeviceInfo) -> int:
    if config.sessions:
        return config.sessions
    return AB_SESSIONS if len(graphs_modes(config, device)) > 1 else 1


def graphs_modes(config: CompareConfig, device: DeviceInfo) -> tuple[bool, ...]:
    choice = config.graphs
    if choice == "auto":
        choice = "both" if device.kind == "cuda" else "off"
    if choice != "off" and device.kind != "cuda":
        raise UserError(f"--graphs {config.graphs} needs a CUDA GPU", "use --graphs off on this machine")
    return {"off": (False,), "on": (True,), "both": (False, True)}[choice]


def session_config(
    config: CompareConfig, device: DeviceInfo, backend: str, ctx: int, index: int, group_size: int
) -> dict:
    model = config.model
    if Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())
    weights = config.weights
    if weights not in ("synthetic", "gguf"):
        weights = str(Path(weights).expanduser().resolve())
    return {
        "model": model,
        "backend": backend,
        "ctx": ctx,
        "device": device.kind,
        "graphs": list(graphs_modes(config, device)),
        "warmup": config.warmup,
        "steps": config.steps,
        "weights": weights,
        "group_size": group_size,
        "seed": config.seed,
        "session_index": index,
        "rounds": config.rounds,
    }


def cell_hash(session: dict, device_name: str) -> str:
    """Identity of a cell: everything but the session index, plus the device."""
    key = {k: v for k, v in session.items() if k != "session_index"}
    key["device_name"] = device_name
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / total)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def run_compare(
    the_plan: Plan,
    command: str,
    progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> tuple[str | None, list[str]]:
    """Run every session of the plan; returns (run id, or None where every session was already
    stored, and the cell hashes it covers). The run is recorded when its first session is."""
    config = the_plan.config
    store = Store(config.db)
    run_id = None
    jobs = []
    for index in range(the_plan.sessions):
        for ctx in config.ctx:
            for backend in the_plan.backends:
                session = session_config(config, the_plan.device, backend, ctx, index, the_plan.group_size)
                jobs.append((session, cell_hash(session, the_plan.device.name)))
    cells = sorted({h for _, h in jobs})
    started = time.monotonic()
    total, ran = len(jobs), 0
    for number, (session, cell) in enumerate(jobs, 1):
        label = f"{session['backend']} ctx {session['ctx']} session {session['session_index'] + 1}/{the_plan.sessions}"
        if config.resume and store.completed_sessions(cell) > session["session_index"]:
            progress(f"{bar(number, total)} {label}: already stored, skipped (--resume)")
            continue
        began = time.monotonic()
        result = run_worker(json.dumps(session), config.timeout)
        run_id = run_id or store.new_run(command, asdict(config))
        store.add_session(run_id, cell, session, the_plan.gpu.name, result)
        ran += 1
        eta = (time.monotonic() - started) / ran * (total - number)  # from sessions run, not skipped
        detail = f" - {result['reason']}" if result.get("reason") else ""
        progress(
            f"{bar(number, total)} {label}: {result['status']}{detail} "
            f"({time.monotonic() - began:.0f} s; ETA {eta:.0f} s)"
        )
    store.close()
    return run_id, cells


def run_sweep(
    configs: list[CompareConfig],
    device: DeviceInfo,
    command: str,
    announce: Callable[[Plan], None] = lambda the_plan: None,
) -> tuple[list[str], list[dict]]:
    """Plan and run each config (one per model) in turn; returns the run ids and the table rows of
    every cell they cover, read back from the store (earlier sessions of those cells included)."""
    from qbench.report import aggregate

    cells, run_ids = [], []
    for config in configs:
        the_plan = plan(config, device)
        announce(the_plan)
        if not the_plan.backends:
            raise UserError("no requested backend can run here", "see `qbench backends`")
        run_id, config_cells = run_compare(the_plan, command)
        cells += config_cells
        if run_id:
            run_ids.append(run_id)
    store = Store(configs[0].db)
    rows = aggregate(store.sessions(cell_hashes=cells))
    store.close()
    return run_ids, rows
