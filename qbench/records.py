"""What one session is and what it gave: `SessionConfig` (the worker's input, the store's key) and
`SessionResult` (the worker's output), both frozen and checked on construction.

Both travel and are stored as JSON with `SCHEMA_VERSION`. A row written by an older qbench (no
version, or keys that did not exist yet) is brought up to date by `migrate`, the one place that
knows what older rows lack: a configuration key an older row did not hold takes the worker's default
and is listed in `SessionConfig.not_stored`, so the row still reads back as it was stored (readers say
"not stored") and its cell key is still the one it was stored under.

This module imports only qbench.settings (the default switches): every layer may import it.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from dataclasses import dataclass, field, fields
from typing import Any

from qbench.runtimes import DEFAULT
from qbench.settings import DEFAULT_MEASURE_SETTINGS

SCHEMA_VERSION = 2  # rows without a "schema_version" key were written before records existed: version 1
SCHEMA_KEY = "schema_version"
# What a session's result may say: a measurement (ok), the gate's verdict on one (incorrect), or what
# the machine did instead (qbench.store.COMPLETED counts only the first two as done).
STATUSES = ("ok", "incorrect", "failed", "crashed", "timeout", "interrupted", "oom", "unavailable")
# Configuration keys a row stored by an older qbench may lack, with the value its worker ran under.
OLDER_CONFIG_DEFAULTS: dict[str, Any] = {
    "runtime": "hf",  # before runtimes existed every session ran under transformers (hf)
    "rounds": 1,
    "cpu": "off",
    "measure_settings": None,  # filled with DEFAULT_MEASURE_SETTINGS below (a fresh dict each time)
    "qbench_version": "",
    "measured_code": "",  # '' = not checked against the worker's code
}


def _check(owner: str, name: str, value: Any, kind: type | tuple[type, ...], what: str, ok: bool = True) -> None:
    """A field of the wrong type (a bool is no int) or value: ValueError naming the record and field."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    right = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not (right and ok):
        raise ValueError(f"{owner}.{name} must be {what}, got {value!r}")


def _json_object(text: str, what: str) -> dict[str, Any]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"a {what} is a JSON object, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class SessionConfig:
    """Everything that decides one session's measurement; all of it but `session_index` (and the
    device's name) is its cell's key."""

    model: str
    backend: str
    ctx: int
    device: str = "cpu"  # cuda | cpu
    graphs: tuple[bool, ...] = (False,)
    warmup: int = 5
    steps: int = 30
    weights: str = "synthetic"  # resolved: synthetic, gguf or an absolute path
    group_size: int = 128
    seed: int = 0
    session_index: int = 0
    rounds: int = 1  # blocks per graphs setting, interleaved in a random order (A/B drift control)
    cpu: str = "off"  # pin the decode loop's thread: off | auto (the fastest core now) | a core number
    runtime: str = DEFAULT  # hf | lean for a linear format; a whole runtime's own name (qbench.runtimes)
    # the QBENCH_* switches this session measures under (qbench.settings.measure_settings), applied by
    # the worker whatever its environment says
    measure_settings: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_MEASURE_SETTINGS))
    qbench_version: str = ""  # the planning qbench's; with measured_code, part of the cell key
    measured_code: str = ""  # settings.measured_code_digest() of the planning qbench ('' = not checked)
    # keys an older stored row did not hold (filled with the defaults above by `migrate`); left out of
    # to_dict() and the cell key, so the row reads and keys as it was stored
    not_stored: tuple[str, ...] = ()

    # the order of today's stored rows (and of the cell key's input before it is sorted)
    ORDER = (
        "model", "backend", "runtime", "ctx", "device", "graphs", "warmup", "steps", "weights", "group_size",
        "seed", "session_index", "rounds", "cpu", "measure_settings", "qbench_version", "measured_code",
    )  # fmt: skip

    def __post_init__(self):
        owner = "SessionConfig"
        for name in ("model", "backend", "runtime", "weights", "device", "cpu"):
            _check(owner, name, getattr(self, name), str, "a non-empty string", bool(getattr(self, name)))
        _check(owner, "ctx", self.ctx, int, "a positive integer", isinstance(self.ctx, int) and self.ctx > 0)
        for name in ("warmup", "seed", "session_index", "group_size"):
            value = getattr(self, name)
            _check(owner, name, value, int, "an integer, 0 or more", isinstance(value, int) and value >= 0)
        for name in ("steps", "rounds"):
            value = getattr(self, name)
            _check(owner, name, value, int, "a positive integer", isinstance(value, int) and value > 0)
        graphs = self.graphs
        good = isinstance(graphs, tuple) and bool(graphs) and all(isinstance(g, bool) for g in graphs)
        _check(owner, "graphs", graphs, tuple, "a non-empty tuple of booleans", good)
        settings = self.measure_settings
        good = isinstance(settings, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in settings.items()
        )
        _check(owner, "measure_settings", settings, dict, "a mapping of QBENCH_* names to strings", good)
        _check(owner, "qbench_version", self.qbench_version, str, "a string")
        _check(owner, "measured_code", self.measured_code, str, "a string")
        unknown = set(self.not_stored) - set(OLDER_CONFIG_DEFAULTS)
        _check(owner, "not_stored", self.not_stored, tuple, f"keys of {sorted(OLDER_CONFIG_DEFAULTS)}", not unknown)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as stored (and as readers take it): JSON types, without the keys an older
        row did not hold."""
        out: dict[str, Any] = {}
        for name in self.ORDER:
            if name in self.not_stored:
                continue
            value = getattr(self, name)
            out[name] = list(value) if name == "graphs" else dict(value) if name == "measure_settings" else value
        return out

    def to_json(self) -> str:
        return json.dumps({**self.to_dict(), SCHEMA_KEY: SCHEMA_VERSION})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionConfig:
        """A configuration from its stored form, of this or an older version (see `migrate`)."""
        data = migrate_config(data)
        not_stored = tuple(data.pop("not_stored", ()))
        return cls(**data, not_stored=not_stored)

    @classmethod
    def from_json(cls, text: str) -> SessionConfig:
        return cls.from_dict(_json_object(text, cls.__name__))

    def cell_key(self, device_name: str) -> str:
        """The cell's identity (the store's `cell_hash`): every stored key but the session index, plus
        the device's name. The same for the same content as every earlier qbench computed it."""
        key = {k: v for k, v in self.to_dict().items() if k != "session_index"}
        key["device_name"] = device_name
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def label(self, sessions: int, per_process_graphs: bool = False) -> str:
        """How progress lines name the session: backend, runtime, graphs where it has its own process,
        ctx, index of `sessions`."""
        runtime = "" if self.runtime == DEFAULT else f" ({self.runtime})"
        if per_process_graphs:
            runtime += " graphs " + ("on" if self.graphs[0] else "off")
        return f"{self.backend}{runtime} ctx {self.ctx} session {self.session_index + 1}/{sessions}"


@dataclass(frozen=True)
class SessionResult:
    """What one session gave. `status` and `reason` always; a session that measured also has the rest
    of what run_session records (a field left None was not recorded and is not stored). Nested parts
    stay plain JSON (dicts, lists) under these names."""

    status: str
    reason: str = ""
    blocks: list[dict[str, Any]] = field(default_factory=list)  # the timed blocks (qbench.session.decode)
    label: str | None = None
    kernel: str | None = None
    compute_dtype: str | None = None
    runtime: str | None = None  # the runner's runtime
    timer: str | None = None
    graph_owner: str | None = None
    bytes: dict[str, Any] | None = None  # the step's stored bytes by class (qbench.analysis.floor)
    bytes_note: str | None = None
    measured_linear_bytes: int | None = None
    load_s: float | None = None
    provenance: dict[str, Any] | None = None  # device, versions, clocks (qbench.session.provenance)
    phases: dict[str, float] | None = None  # where the session's time went
    weights_cache: str | None = None
    baseline: bool | None = None  # the 16-bit reference of its runtime
    quality: str | None = None
    quality_reference: str | None = None
    tokens: str | None = None
    layer_check: dict[str, Any] | None = None
    # a backend that rounds its activations, on synthetic weights: its layers on the model's own inputs
    model_layer_check: dict[str, Any] | None = None
    reference: str | None = None
    perplexity: dict[str, Any] | None = None
    kl: dict[str, Any] | None = None
    host: dict[str, Any] | None = None
    energy_meter: dict[str, Any] | None = None
    gpu_memory_mib: float | None = None
    gpu_memory_source: str | None = None
    step_kernels: list[dict[str, Any]] | str | None = None  # the profiled step's kernels, or why none
    step_gpu_us: float | None = None
    kernel_seen: bool | None = None
    peak_memory_mib: float | None = None
    reserved_memory_mib: float | None = None  # torch.cuda.memory_reserved() when gpu_memory_mib was read
    allocated_memory_mib: float | None = None  # torch.cuda.memory_allocated() then: reserved less it is cached
    nvml_after: dict[str, Any] | None = None
    runtime_notes: list[str] | None = None
    session_s: float | None = None
    worker_start: str | None = None  # spawn | fork
    # the datasheet bandwidth the floor uses, decided when the session was stored
    peak_bandwidth_gbps: float | None = None
    bandwidth_source: str | None = None
    node: dict[str, Any] | None = None  # the Ray node that ran it (qbench.execute.ray): host, ip, node id

    def __post_init__(self):
        owner = "SessionResult"
        _check(owner, "status", self.status, str, f"one of {', '.join(STATUSES)}", self.status in STATUSES)
        _check(owner, "reason", self.reason, str, "a string")
        good = isinstance(self.blocks, list) and all(isinstance(b, dict) for b in self.blocks)
        _check(owner, "blocks", self.blocks, list, "a list of block objects", good)
        for name, kind in TYPED_RESULT_FIELDS.items():
            value = getattr(self, name)
            if value is not None:
                _check(owner, name, value, kind, f"a {' or '.join(k.__name__ for k in kind)}")

    def to_dict(self) -> dict[str, Any]:
        """The result as stored: the fields that were recorded."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def to_json(self) -> str:
        return json.dumps({**self.to_dict(), SCHEMA_KEY: SCHEMA_VERSION})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionResult:
        return cls(**migrate_result(data))

    @classmethod
    def from_json(cls, text: str) -> SessionResult:
        return cls.from_dict(_json_object(text, cls.__name__))

    @classmethod
    def from_worker(cls, raw: dict[str, Any]) -> SessionResult:
        """A worker's result (its JSON object) as a SessionResult; one that does not read as one is a
        failed session that says why, never the end of the run."""
        try:
            return cls.from_dict(raw)
        except (ValueError, TypeError) as error:
            return cls.failed("failed", f"the worker's result does not read: {error}"[:500])

    @classmethod
    def failed(cls, status: str, reason: str) -> SessionResult:
        """A session that measured nothing, and why."""
        return cls(status=status, reason=reason)


_NUMBER = (numbers.Real,)
TYPED_RESULT_FIELDS: dict[str, tuple[type, ...]] = {
    **{name: (str,) for name in ("label", "kernel", "compute_dtype", "runtime", "timer", "graph_owner", "tokens")},
    **{name: (str,) for name in ("weights_cache", "reference", "worker_start", "bandwidth_source", "bytes_note")},
    **{name: (dict,) for name in ("bytes", "provenance", "phases", "host", "energy_meter", "nvml_after")},
    **{name: (dict,) for name in ("layer_check", "model_layer_check", "perplexity", "kl", "node")},
    **{name: _NUMBER for name in ("load_s", "gpu_memory_mib", "step_gpu_us", "peak_memory_mib", "session_s")},
    "reserved_memory_mib": _NUMBER,
    "allocated_memory_mib": _NUMBER,
    "peak_bandwidth_gbps": _NUMBER,
    "measured_linear_bytes": (int,),
    "baseline": (bool,),
    "kernel_seen": (bool,),
    "runtime_notes": (list,),
    "step_kernels": (list, str),
}


# ---- the one migration --------------------------------------------------------------------------
def _version(owner: str, data: dict[str, Any]) -> int:
    version = data.pop(SCHEMA_KEY, 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        raise ValueError(f"{owner} has schema version {version!r}; this qbench reads 1 to {SCHEMA_VERSION}")
    return version


def migrate_config(data: dict[str, Any]) -> dict[str, Any]:
    """A stored configuration as SessionConfig's keyword arguments (plus `not_stored`): version 1
    rows may lack the keys of OLDER_CONFIG_DEFAULTS (each is filled and named in not_stored); a key
    no qbench wrote is an error naming it."""
    data = dict(data)
    _version("SessionConfig", data)
    known = {f.name for f in fields(SessionConfig)} - {"not_stored"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"SessionConfig has unknown key(s) {', '.join(unknown)}")
    missing = tuple(name for name in OLDER_CONFIG_DEFAULTS if name not in data)
    for name in missing:
        default = OLDER_CONFIG_DEFAULTS[name]
        data[name] = dict(DEFAULT_MEASURE_SETTINGS) if name == "measure_settings" else default
    if isinstance(data.get("graphs"), list):
        data["graphs"] = tuple(data["graphs"])
    data["not_stored"] = missing
    return data


def migrate_result(data: dict[str, Any]) -> dict[str, Any]:
    """A stored result as SessionResult's keyword arguments: every key any qbench stored is a field
    (older rows simply lack some); a key no qbench wrote is an error naming it."""
    data = dict(data)
    _version("SessionResult", data)
    unknown = sorted(set(data) - {f.name for f in fields(SessionResult)})
    if unknown:
        raise ValueError(f"SessionResult has unknown key(s) {', '.join(unknown)}")
    return data


def migrate(config: dict[str, Any], result: dict[str, Any]) -> tuple[SessionConfig, SessionResult]:
    """A stored session row (its config_json and result_json, of any version) as records."""
    return SessionConfig.from_dict(config), SessionResult.from_dict(result)
