"""Planning `qbench compare`: a CompareConfig checked against this machine (or the device a node
probed) into a Plan, and the Plan into its sessions, each a SessionConfig (qbench.records) with its
cell key, round-robin (session 1 of every backend, then session 2, ...) so slow drift of the machine
spreads over all backends instead of landing on one.

Everything a user can get wrong is checked here, before any worker starts and before anything is
written. The model spec and every backend are resolved once, here: the plan carries what the
executors (qbench.execute.local, qbench.execute.ray) and the forkserver's preload need, and each
session's SessionConfig carries what its worker needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qbench import __version__, settings
from qbench.backend import DeviceInfo
from qbench.errors import UserError
from qbench.execute.lock import check as check_lock
from qbench.records import SessionConfig
from qbench.registry import backend_names, is_built_in, load_backend, warnings
from qbench.runtimes import DEFAULT, get_runtime, linear_runtimes, runtime_names
from qbench.runtimes import warnings as runtime_warnings
from qbench.session.positions import cache_positions
from qbench.specs import (
    GpuSpec,
    ModelSpec,
    check_path,
    gpu_for_device,
    is_cpu_name,
    load_gpu_spec,
    load_model_spec,
    shown,
)
from qbench.store import DEFAULT_DB, Store

GRAPHS_CHOICES = ("off", "on", "both", "auto")
GROUP_SIZES = (32, 64, 128, 256)
# Upper bounds on what one command may ask for. Each is far beyond any useful run; each turns a
# mistyped number (--sessions 100000000: a job list that filled 2.5 GB before a MemoryError) into one
# line while planning, before any worker starts.
MAX_SESSIONS = 1_000  # per cell: BCa intervals need 10; 1,000 fresh processes of even the tiny model take hours
MAX_PLAN_SESSIONS = 10_000  # in one command, every model, ctx, backend and runtime together: 14 h at 5 s each
MAX_STEPS = 100_000  # timed steps per block (default 30); each is also a position of the KV cache
MAX_WARMUP = 100_000  # untimed steps before the timed ones (default 5)
MAX_ROUNDS = 100  # blocks per graphs setting in a session (default 1)
MAX_CTX = 1 << 24  # 16,777,216 positions: longer than any published model's context
MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a session still running after a week is hung
# torch's generators take 0 .. 2**64-1; the seed is also stored, and a signed 64-bit integer
# (SQLite's, JSON readers') holds 0 .. 2**63-1 exactly.
MAX_SEED = 2**63 - 1


def check_group_size(value: int) -> None:
    """--group-size is one of GROUP_SIZES, or 0 for auto."""
    if value and value not in GROUP_SIZES:
        sizes = ", ".join(map(str, GROUP_SIZES))
        raise UserError(f"--group-size must be one of {sizes} (or 0 for auto), got {value!r}")


def check_cpu_option(value: str) -> None:
    """--cpu is off, auto, or a core this process may run on."""
    if value in ("auto", "off"):
        return
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    # ASCII digits only: str.isdigit() also accepts '²' and other scripts' digits, which int() refuses
    if not (value.isascii() and value.isdigit()) or (allowed and int(value) not in allowed):
        raise UserError(
            f"--cpu must be off, auto or one of this process's cores {allowed}, got {shown(value)}",
            "use --cpu off (no pinning) or auto (the fastest core now)",
        )


@dataclass(frozen=True)
class CompareConfig:
    model: str = "smollm2-135m"
    gpu: str = "auto"
    backends: tuple[str, ...] = ("available",)
    runtimes: tuple[str, ...] = (DEFAULT,)  # runtimes each linear-format backend runs under (qbench.runtimes)
    ctx: tuple[int, ...] = (512,)
    graphs: str = "auto"
    sessions: int = 0  # 0 = auto: AB_SESSIONS where a graphs A/B runs, else 1 (see sessions_for)
    warmup: int = 5
    steps: int = 30
    weights: str = "auto"  # auto = a checkpoint folder's own weights, else synthetic (qbench.model.weights)
    group_size: int = 0  # 0 = auto: 128 where the model's shapes allow it (see resolve_group_size)
    seed: int = 0
    timeout: float = 900.0
    db: str = str(DEFAULT_DB)
    resume: bool = False
    rounds: int = 1
    cpu: str = "off"  # pin the decode loop's thread: off | auto | a core (qbench.session.host.session_host)
    quick: bool = False  # the no-option look: at most QUICK_SESSIONS sessions per cell when --sessions is auto
    # --vary: measuring switches (settings.MEASURE_VARIABLES) and the values each cell runs under, as
    # settings.parse_vary gives them: a cell for each combination, their sessions interleaved
    vary: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self):
        def bad(name: str, allowed: str, fix: str = ""):
            given = getattr(self, name)
            given = ",".join(map(str, given)) if isinstance(given, tuple) else given
            raise UserError(f"--{name.replace('_', '-')} must be {allowed}, got {given!r}", fix)

        def count(name: str, low: int, high: int, what: str, fix: str) -> None:
            if not low <= getattr(self, name) <= high:
                bad(name, f"{what} from {low} to {high}", fix)

        if self.graphs not in GRAPHS_CHOICES:
            bad("graphs", " | ".join(GRAPHS_CHOICES))
        if not self.ctx or any(not 1 <= c <= MAX_CTX for c in self.ctx):
            bad("ctx", f"one or more positive integers, at most {MAX_CTX}", "e.g. --ctx 512,2048")
        if not self.backends:
            bad("backends", "one or more backend names, or 'available'")
        linear = linear_runtimes()
        if (
            not self.runtimes
            or any(r not in linear for r in self.runtimes)
            or len(set(self.runtimes)) < len(self.runtimes)
        ):
            bad("runtimes", f"one or more of {', '.join(linear)} (a whole engine is chosen by its backend)")
        count("sessions", 0, MAX_SESSIONS, "0 (auto) or per cell", f"--sessions {AB_SESSIONS} gives BCa intervals")
        count("steps", 1, MAX_STEPS, "timed steps per block", "the default is 30")
        count("warmup", 0, MAX_WARMUP, "untimed steps", "the default is 5")
        check_group_size(self.group_size)
        if not 0 < self.timeout <= MAX_TIMEOUT_S:  # NaN fails every comparison, so it is refused too
            bad("timeout", f"seconds above 0, at most {MAX_TIMEOUT_S:.0f} (a week)", "the default is 900")
        count("seed", 0, MAX_SEED, "an integer", "the default is 0")
        count("rounds", 1, MAX_ROUNDS, "blocks per graphs setting", "the default is 1")
        check_cpu_option(self.cpu)
        if settings.parse_vary([f"{name}={','.join(values)}" for name, values in self.vary]) != self.vary:
            bad("vary", "NAME=VALUE,VALUE pairs as settings.parse_vary gives them")
        if not self.db.strip():
            bad("db", "a file path", "e.g. --db results/qbench.sqlite")
        check_path("--db", self.db)


@dataclass
class Plan:
    config: CompareConfig
    device: DeviceInfo
    gpu: GpuSpec
    backends: list[str]
    group_size: int = 128
    weights: str = "synthetic"  # resolved: synthetic, gguf or an absolute path
    skipped: dict[str, str] = field(default_factory=dict)  # backend -> why it does not run here
    notes: list[str] = field(default_factory=list)  # what the user should know before it runs
    sessions: int = 1
    runtimes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # backend -> the runtimes it runs under
    per_process: set[str] = field(default_factory=set)  # backends that run each graphs setting in its own session
    # what the sessions measure under, read once while planning (qbench.settings): in every cell key;
    # with --vary one setting a combination of the varied values (settings.measure_variants)
    variants: list[dict[str, str]] = field(default_factory=lambda: [dict(settings.DEFAULT_MEASURE_SETTINGS)])
    measured_code: str = ""  # settings.measured_code_digest() of the planning qbench
    spec: ModelSpec | None = None  # the model's spec, loaded once while planning
    model_types: tuple[str, ...] = ()  # transformers model types the forkserver preloads
    compiler: bool = False  # whether sessions import torch.compile's modules (needs_compiler)


def resolve_group_size(requested: int, spec) -> int:
    """128 (what published AWQ/GPTQ checkpoints use) unless some layer's in_features forbids it; then
    the largest of 64, 32 that divides them all. An explicit size that does not fit is an error."""
    in_features = {k for _, k, _, _ in spec.linear_shapes()}
    check_group_size(requested)
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


def check_ctx(spec: ModelSpec, ctx: tuple[int, ...], warmup: int = 0, steps: int = 0) -> None:
    """Every context, with the steps that follow it, must fit the model's positions."""
    if not ctx or any(not 1 <= c <= MAX_CTX for c in ctx):
        raise UserError(
            f"--ctx must be positive integers, at most {MAX_CTX}, got {','.join(map(str, ctx))!r}",
            "e.g. --ctx 512,2048",
        )
    limit = spec.max_positions
    if limit is None:
        return
    for context in ctx:
        needed = cache_positions(context, warmup, steps) if steps else context
        if needed > limit:
            detail = f" (ctx {context} + {needed - context} warm-up, timed and spare steps)" if steps else ""
            raise UserError(
                f"--ctx {context} needs {needed} positions{detail}; {spec.name} has {limit} (max_position_embeddings)",
                f"use --ctx {limit - (needed - context)} or less",
            )


def probe_device() -> DeviceInfo:
    """Ask a child process, so the parent never holds a CUDA context while workers run."""
    code = "import json; from qbench.session.provenance import device_info; print(json.dumps(device_info().__dict__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise UserError("could not query the device: " + (out.stderr.strip().splitlines() or ["?"])[-1])
    data = json.loads(out.stdout.strip().splitlines()[-1])
    capability = tuple(data["capability"]) if data["capability"] else None
    return DeviceInfo(data["kind"], data["name"], capability, data.get("uuid", ""))


def detected_gpu(device: DeviceInfo) -> GpuSpec:
    """The spec of the device itself: its CUDA name's, or its CPU's (`cpu`, or `cpu-<label>`)."""
    return gpu_for_device(device.name if device.kind == "cuda" or is_cpu_name(device.name) else "cpu")


class GpuNotHere(UserError):
    """--gpu names a GPU this machine is not. `qbench compare` (local) answers it with the PREDICTED
    table from the shipped calibration instead; anywhere else it is the one-line error."""

    def __init__(self, what: str, fix: str, wanted: GpuSpec, seen: str):
        super().__init__(what, fix)
        self.wanted, self.seen = wanted, seen


def resolve_gpu(requested: str, device: DeviceInfo, predict_command: str = "") -> GpuSpec:
    detected = detected_gpu(device)
    if requested == "auto":
        return detected
    wanted = load_gpu_spec(requested)
    if wanted.name != detected.name:
        seen = device.name if device.kind == "cuda" else f"no CUDA GPU ({detected.name})"
        other = f"; or predict it from stored measurements: {predict_command}" if predict_command else ""
        raise GpuNotHere(
            f"--gpu {requested} does not match this machine: detected {seen} (it never substitutes another GPU)",
            f"measure on a {wanted.description}, or use --gpu auto{other}",
            wanted,
            seen,
        )
    return wanted


def predict_command(config: CompareConfig) -> str:
    """The `qbench predict` line that answers a compare for a GPU this machine is not."""
    parts = ["qbench predict", f"--model {config.model}", f"--gpu {config.gpu}"]
    if config.backends != ("available",):
        parts.append(f"--backends {','.join(config.backends)}")
    if config.runtimes != (DEFAULT,):
        parts.append(f"--runtimes {','.join(config.runtimes)}")
    parts.append(f"--ctx {','.join(map(str, config.ctx))}")
    if config.db != str(DEFAULT_DB):
        parts.append(f"--db {config.db}")
    return " ".join(parts)


def check_inputs(config: CompareConfig) -> tuple[ModelSpec, int, str, str]:
    """What needs no device: the model, group size, contexts and weights. Returns the spec, the group
    size, the resolved weights and a note about them ('' if none)."""
    from qbench.model.weights import resolve_weights

    spec = load_model_spec(config.model)
    group_size = resolve_group_size(config.group_size, spec)
    check_ctx(spec, config.ctx, config.warmup, config.steps)
    weights, weights_note = resolve_weights(config.weights, spec)
    return spec, group_size, weights, weights_note


def plan(
    config: CompareConfig, device: DeviceInfo | None = None, checked: tuple[ModelSpec, int, str, str] | None = None
) -> Plan:
    """Check everything the config asks for against this machine (or `device`, where the sessions run
    elsewhere); raises UserError, writes nothing. `checked`: check_inputs(config), where the caller
    has it already (the spec is loaded once)."""
    spec, group_size, weights, weights_note = checked or check_inputs(config)
    # a bad lean switch: one line, before the device probe
    variants, variant_notes = settings.measure_variants(config.vary)
    device = device or probe_device()
    gpu = resolve_gpu(config.gpu, device, predict_command(config))
    result = Plan(config, device, gpu, [], group_size, weights, sessions=sessions_for(config, device), spec=spec)
    result.model_types = (spec.hf_config["model_type"],)
    result.variants, result.measured_code = variants, settings.measured_code_digest()
    result.notes += warnings() + runtime_warnings() + ([weights_note] if weights_note else []) + variant_notes
    if weights not in ("synthetic", "gguf"):
        from qbench.session.quality import tokenizer_missing

        missing = tokenizer_missing(weights)
        if missing:
            result.notes.append(f"perplexity will be skipped: {missing}")
    asked_all = config.backends == ("available",)
    loaded = {}
    for name in backend_names() if asked_all else list(config.backends):
        try:
            backend = load_backend(name)  # an unknown name fails here, before any session runs
        except UserError as error:
            if not asked_all:
                raise
            result.skipped[name] = str(error)  # a broken plugin costs its own row only
            continue
        reason = backend.unavailable_reason(device) or backend.unsupported_reason(spec, weights)
        own = tuple(r for r in backend.runtimes if not get_runtime(r).linear)
        runtimes = own[:1] if own else tuple(r for r in config.runtimes if r in backend.runtimes)
        if not reason and not runtimes:
            reason = f"runs under {', '.join(backend.runtimes)} only, not --runtimes {','.join(config.runtimes)}"
        if reason:
            result.skipped[name] = reason
        else:
            loaded[name] = backend
            result.backends.append(name)
            result.runtimes[name] = runtimes
            if backend.graphs_per_process:
                result.per_process.add(name)
    plugins = [name for name in result.backends if not is_built_in(name)]
    if asked_all and plugins:  # an installed plugin joins every default run: say so, once
        result.notes.append(
            f"installed plugin backend(s) {', '.join(plugins)} join this run (--backends available); "
            "name --backends to leave them out"
        )
    result.compiler = needs_compiler(result, loaded)
    chosen = {runtime for runtimes in result.runtimes.values() for runtime in runtimes}
    if config.vary and result.backends and not any(reads_switches(r) for r in chosen):
        varied = ", ".join(name for name, _ in config.vary)
        readers = ", ".join(r for r in runtime_names() if get_runtime(r).reads_switches)
        result.notes.append(f"--vary {varied}: no runtime of this run reads it (only {readers}), so it changes nothing")
    return result


# Sessions per cell when a run A/B-tests CUDA graphs and --sessions is left at auto: from 10 sessions
# up the intervals are BCa bootstrap (the research's N = 10); below that they cover too little.
AB_SESSIONS = 10
# `qbench compare` with neither --model nor --sessions is a first look that should take minutes on
# any machine: at most this many sessions per cell (t-intervals), and it says how to get the full run.
QUICK_SESSIONS = 3


def sessions_for(config: CompareConfig, device: DeviceInfo) -> int:
    if config.sessions:
        return config.sessions
    auto = AB_SESSIONS if len(graphs_modes(config, device)) > 1 else 1
    return min(auto, QUICK_SESSIONS) if config.quick else auto


def graphs_modes(config: CompareConfig, device: DeviceInfo) -> tuple[bool, ...]:
    choice = config.graphs
    if choice == "auto":
        choice = "both" if device.kind == "cuda" else "off"
    if choice != "off" and device.kind != "cuda":
        raise UserError(f"--graphs {config.graphs} needs a CUDA GPU", "use --graphs off on this machine")
    return {"off": (False,), "on": (True,), "both": (False, True)}[choice]


def session_config(
    the_plan: Plan,
    backend: str,
    ctx: int,
    index: int,
    runtime: str = DEFAULT,
    graphs: tuple[bool, ...] | None = None,
    switches: dict[str, str] | None = None,
) -> SessionConfig:
    """One session's whole configuration: what the worker runs, and (less the index) its cell's key.
    `graphs`: the settings this session times (default: every setting the run asks for); `switches`:
    the measuring switches it runs under (default: the plan's first variant; the defaults, whatever
    is asked, under a runtime that reads none, so its cells never split on them). The key holds every
    measuring switch (qbench.settings.measure_settings) and qbench's version with the digest of its
    measured code, so sessions measured under other switches or other code never pool, and a --vary
    cell is the cell the same switches set in the environment make."""
    config = the_plan.config
    model = config.model
    if Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())
    return SessionConfig(
        model=model,
        backend=backend,
        runtime=runtime,
        ctx=ctx,
        device=the_plan.device.kind,
        graphs=tuple(graphs if graphs is not None else graphs_modes(config, the_plan.device)),
        warmup=config.warmup,
        steps=config.steps,
        weights=the_plan.weights,
        group_size=the_plan.group_size,
        seed=config.seed,
        session_index=index,
        rounds=config.rounds,
        cpu=config.cpu,
        measure_settings=dict(
            settings.DEFAULT_MEASURE_SETTINGS
            if not reads_switches(runtime)
            else switches if switches is not None else the_plan.variants[0]
        ),
        qbench_version=__version__,
        measured_code=the_plan.measured_code,
    )


def cell_hash(session: SessionConfig | dict, device_name: str) -> str:
    """Identity of a cell: everything but the session index, plus the device (SessionConfig.cell_key;
    a stored config's dict is hashed as stored)."""
    if isinstance(session, SessionConfig):
        return session.cell_key(device_name)
    key = {k: v for k, v in session.items() if k != "session_index"}
    key["device_name"] = device_name
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def device_key(device: DeviceInfo) -> str:
    return device.uuid or (device.name if device.kind == "cuda" else "cpu")


def needs_compiler(the_plan: Plan, loaded: dict | None = None) -> bool:
    """Whether the sessions import torch.compile's modules: lean compiles its step on CUDA, and some
    backends' packages import them (`Backend.imports_compiler`). `loaded`: the plan's backends by
    name, where planning has them already."""
    chosen = {r for runtimes in the_plan.runtimes.values() for r in runtimes}
    compiles = the_plan.device.kind == "cuda" and any(get_runtime(r).compiles for r in chosen)
    loaded = loaded or {}
    return compiles or any((loaded.get(n) or load_backend(n)).imports_compiler for n in the_plan.backends)


def session_jobs(the_plan: Plan) -> list[tuple[SessionConfig, str]]:
    """Every session of the plan with its cell hash, round-robin: session 1 of every cell, then 2...
    A backend's --vary settings run one after the other, in the plan's order for odd-numbered sessions
    and reversed for even ones (A B, B A, A B, ...): a drift of the machine over the run moves both
    sides of an A/B alike, and neither always runs first. Under a runtime that reads no switch (hf,
    llama.cpp) a backend is one cell, keyed under the defaults (session_switches)."""
    config = the_plan.config
    jobs = []
    runs_under = {name: the_plan.runtimes.get(name, (DEFAULT,)) for name in the_plan.backends}
    runtimes_in_order = list(dict.fromkeys(r for runtimes in runs_under.values() for r in runtimes))
    modes = graphs_modes(config, the_plan.device)
    for index in range(the_plan.sessions):
        variants = the_plan.variants if index % 2 == 0 else the_plan.variants[::-1]
        for ctx in config.ctx:
            for runtime in runtimes_in_order:
                for backend in the_plan.backends:
                    if runtime not in runs_under[backend]:
                        continue
                    for switches in variants if reads_switches(runtime) else variants[:1]:  # one: the defaults
                        # one process per graphs setting where the runtime fixes it per process (llama.cpp)
                        for graphs in [(m,) for m in modes] if backend in the_plan.per_process else [modes]:
                            session = session_config(the_plan, backend, ctx, index, runtime, graphs, switches)
                            jobs.append((session, cell_hash(session, the_plan.device.name)))
    return jobs


def stored_for_resume(
    store: Store,
    jobs: list[tuple[SessionConfig, str]],
    resume: bool,
    progress: Callable[[str], None] = lambda line: None,
) -> dict[str, list[int]]:
    """With --resume, the sessions already stored done (store.COMPLETED: ok or incorrect) for each cell
    of `jobs`, in order, after storing the results a full disk kept aside (store.keep_pending)."""
    if not resume:
        return {}
    kept = store.store_pending()
    if kept:
        progress(f"stored {kept} session result(s) kept in {store.pending_dir} when the store was full (--resume)")
    return {h: store.completed_session_ids(h) for h in {h for _, h in jobs}}


def stored_session(stored: dict[str, list[int]], session: SessionConfig, cell: str) -> int | None:
    """The stored session --resume counts in place of this one, or None where it must run."""
    earlier = stored.get(cell, [])
    return earlier[session.session_index] if session.session_index < len(earlier) else None


def reads_switches(runtime: str) -> bool:
    """Whether a runtime's cells are measured once a --vary value (it reads the switches) or once."""
    return get_runtime(runtime).reads_switches


def planned_sessions(the_plan: Plan) -> int:
    """How many sessions session_jobs(the_plan) holds, counted without building it."""
    modes = len(graphs_modes(the_plan.config, the_plan.device))
    per_ctx = sum(
        (modes if name in the_plan.per_process else 1)
        * (len(the_plan.variants) if reads_switches(runtime) else 1)
        for name in the_plan.backends
        for runtime in the_plan.runtimes.get(name, (DEFAULT,))
    )
    return the_plan.sessions * len(the_plan.config.ctx) * per_ctx


def check_runnable(plans: list[Plan], local: bool = True) -> None:
    """Every plan has a backend to run, the plans are not too many sessions, the QBENCH_* folders and
    cache size are valid, and the store can be written: checked before any session and before any
    job list is built (a worker runs in a scratch folder, so a relative folder there would be
    written into scratch and lost)."""
    settings.check({name for the_plan in plans for name, _ in the_plan.config.vary})
    for the_plan in plans:
        if not the_plan.backends:
            reasons = "; ".join(f"{name}: {why}" for name, why in the_plan.skipped.items())
            raise UserError(f"no requested backend can run here ({reasons})", "see `qbench backends`")
    total = sum(planned_sessions(the_plan) for the_plan in plans)
    if total > MAX_PLAN_SESSIONS:
        raise UserError(
            f"this command plans {total:,} sessions, more than {MAX_PLAN_SESSIONS:,} (sessions per cell x models "
            "x contexts x backends x runtimes x --vary's combinations)",
            "ask for fewer, or split the study into several commands on one --db",
        )
    if local:  # this machine's device lock: its folder and file are usable (not links, ours), else one line
        check_lock(device_key(plans[0].device))
    Store(plans[0].config.db).close()  # a --db that cannot be written fails here, before any session
