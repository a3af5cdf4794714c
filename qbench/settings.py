"""Every QBENCH_* variable that names a folder, and the weights cache's size, read in one place.

qbench runs as root on shared hosts and deletes what it finds in its caches, so where they are is
never guessed: a folder variable that is set must be an absolute path (after `~`). An empty value or
a relative one is an error that names the variable, never "here": a worker runs in a scratch folder
that is deleted afterwards, and `QBENCH_KERNEL_CACHE=` once made `cache clear --kernels` empty the
working directory. The defaults hang off the home folder, which must be absolute too.
`compare` calls `check()` before any worker starts, so a bad value is one line, exit 2.

  QBENCH_CACHE_DIR     the weights cache (default ~/.cache/qbench/weights)
  QBENCH_KERNEL_CACHE  built CUDA kernels (default ~/.cache/qbench/kernels)
  QBENCH_LOCK_DIR      the device locks (default /tmp/qbench-locks; qbench/execute/lock.py says why)
  QBENCH_CACHE_GB      the weights cache's bound in GB (default 40; a finite number >= 0)

And the variables that change what a session measures (`measure_settings()`): the parent reads them
once while planning and puts them into every session's configuration, so they are part of the cell
key (sessions measured under different switches never pool) and the worker runs under exactly them:

  QBENCH_LEAN_GEMV       lean's 16-bit linear layers: auto | cublas | triton (qbench/runtimes/lean.py)
  QBENCH_LEAN_ATTENTION  lean's decode attention: auto | sdpa | split-k
  QBENCH_LEAN_COMBINE    how the split-K attention combines its chunks: kernel (a second launch) |
                         fused (each kv head's last chunk to finish combines them, one launch)
  QBENCH_LEAN_ROPE       where lean rotates q and k and writes the cache: auto (inside the split-K
                         attention's first kernel, where it runs) | step (in the step, as before)
  QBENCH_LEAN_COMPILE    lean's torch.compile: 1 (where the backend declares it) | 0 | all
  QBENCH_LEAN_PDL        lean's own kernels as programmatic dependent launches: off | on (Hopper+;
                         qbench/runtimes/kernels/overlap.py)
  QBENCH_LEAN_FOLD       lean's norms, residual adds and SiLU products inside its GEMVs (16-bit and
                         qbench-int4's, README): off | on

QBENCH_WEIGHTS_CACHE and QBENCH_FORKSERVER are not among them: they change what a session costs
(loading its weights, starting its process), not the steps it times.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import pwd
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path
from types import MappingProxyType

from qbench.errors import UserError

# Fixed, not under $TMPDIR: one lock per device must hold for every user and every TMPDIR.
DEFAULT_LOCK_DIR = Path("/tmp/qbench-locks")
DEFAULT_CACHE_GB = 40.0


def _home() -> Path:
    """The home folder, absolute: $HOME, else the password database's entry for this user."""
    for candidate in (os.environ.get("HOME", ""), _passwd_home()):
        if candidate and Path(candidate).is_absolute():
            return Path(candidate)
    raise UserError(
        "no absolute home folder for qbench's caches (HOME is empty or relative)",
        "set HOME to an absolute path, or QBENCH_CACHE_DIR and QBENCH_KERNEL_CACHE",
    )


def _passwd_home() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return ""


def folder(variable: str, default: Callable[[], Path]) -> Path:
    """The folder `variable` names, or `default()` where it is unset; set but empty or relative is an
    error (qbench never resolves a folder it may delete from against the current directory)."""
    value = os.environ.get(variable)
    if value is None:
        path = default()
        assert path.is_absolute(), path
        return path
    fix = f"give an absolute path, or unset {variable} for the default"
    if not value.strip():
        raise UserError(f"{variable} is set but empty (an empty folder would mean the current directory)", fix)
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise UserError(f"{variable} must be an absolute path, got {value!r}", fix)
    return path


def cache_dir() -> Path:
    return folder("QBENCH_CACHE_DIR", lambda: _home() / ".cache" / "qbench" / "weights")


def kernel_cache() -> Path:
    return folder("QBENCH_KERNEL_CACHE", lambda: _home() / ".cache" / "qbench" / "kernels")


def lock_dir() -> Path:
    return folder("QBENCH_LOCK_DIR", lambda: DEFAULT_LOCK_DIR)


def cache_limit_bytes() -> int:
    value = os.environ.get("QBENCH_CACHE_GB")
    if value is None:
        return int(DEFAULT_CACHE_GB * 1e9)
    try:
        gigabytes = float(value)
    except ValueError:
        gigabytes = math.nan
    if not math.isfinite(gigabytes) or gigabytes < 0:
        raise UserError(
            f"QBENCH_CACHE_GB must be a number of GB, finite and >= 0, got {value!r}",
            f"give e.g. QBENCH_CACHE_GB=20, or unset it for the default {DEFAULT_CACHE_GB:.0f}",
        )
    return int(gigabytes * 1e9)


# variable -> its allowed values, the default first (qbench/runtimes/lean.py reads them in the worker)
MEASURE_VARIABLES: dict[str, tuple[str, ...]] = {
    "QBENCH_LEAN_GEMV": ("auto", "cublas", "triton"),
    "QBENCH_LEAN_ATTENTION": ("auto", "sdpa", "split-k"),
    "QBENCH_LEAN_COMBINE": ("kernel", "fused"),
    "QBENCH_LEAN_ROPE": ("auto", "step"),
    "QBENCH_LEAN_COMPILE": ("1", "0", "all"),
    "QBENCH_LEAN_PDL": ("off", "on"),
    "QBENCH_LEAN_FOLD": ("off", "on"),
}
DEFAULT_MEASURE_SETTINGS: Mapping[str, str] = MappingProxyType({k: v[0] for k, v in MEASURE_VARIABLES.items()})


def measure_settings(environ: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """Every QBENCH_* variable that changes what a session measures, validated: variable -> value
    (the default where unset). A value outside its choices is one line (UserError)."""
    environ = os.environ if environ is None else environ
    chosen = {}
    for variable, allowed in MEASURE_VARIABLES.items():
        value = environ.get(variable, allowed[0])
        if value not in allowed:
            raise UserError(
                f"{variable} must be one of {', '.join(allowed)}, got {value!r}",
                f"set one of them, or unset {variable} for the default {allowed[0]}",
            )
        chosen[variable] = value
    return MappingProxyType(chosen)


def parse_vary(texts: tuple[str, ...] | list[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`--vary NAME=V1,V2` (repeatable): each a measuring switch (MEASURE_VARIABLES) and the values
    its sessions run under, checked; a bad one is one line (UserError)."""
    names = ", ".join(MEASURE_VARIABLES)
    varied: dict[str, tuple[str, ...]] = {}
    for text in texts:
        name, sign, listed = text.partition("=")
        name = name.strip()
        values = tuple(v.strip() for v in listed.split(","))
        if not sign or name not in MEASURE_VARIABLES:
            cores = {v.removeprefix("QBENCH_LEAN_"): v for v in MEASURE_VARIABLES}  # FOLD -> QBENCH_LEAN_FOLD
            core = name.upper().removeprefix("QBENCH_").removeprefix("LEAN_")
            close = difflib.get_close_matches(core, cores, n=1, cutoff=0.75)
            guess = cores[close[0]] if close and sign else ""
            raise UserError(
                f"--vary takes NAME=VALUE,VALUE with NAME one of {names}, got {text!r}",
                f"did you mean {guess} (values {', '.join(MEASURE_VARIABLES[guess])})?"
                if guess
                else "e.g. --vary QBENCH_LEAN_FOLD=off,on",
            )
        allowed = MEASURE_VARIABLES[name]
        if not all(values) or any(v not in allowed for v in values) or len(set(values)) < len(values):
            raise UserError(
                f"--vary {name} takes distinct values from {', '.join(allowed)}, got {listed!r}",
                f"e.g. --vary {name}={','.join(allowed[:2])}",
            )
        if name in varied:
            raise UserError(f"--vary names {name} twice", f"give its values once: --vary {name}=V1,V2")
        varied[name] = values
    return tuple(varied.items())


def measure_variants(
    vary: tuple[tuple[str, tuple[str, ...]], ...], environ: Mapping[str, str] | None = None
) -> tuple[list[dict[str, str]], list[str]]:
    """The switch settings a compare's sessions run under (where their runtime reads the switches):
    one, the environment's (measure_settings()), without `vary`, else one for each combination of the
    varied values (the first variable's outermost), the other switches from the environment. With
    notes: a varied switch the environment also sets is replaced; a switch given one value is no A/B."""
    environ = dict(os.environ if environ is None else environ)
    notes = []
    for name, values in vary:
        if name in environ:
            notes.append(f"--vary {name}={','.join(values)} replaces {name}={environ.pop(name)!r} from the environment")
        if len(values) == 1:
            notes.append(f"--vary {name}={values[0]} names one value: no A/B, the same as setting {name}={values[0]}")
    variants = [dict(measure_settings(environ))]  # a bad switch left to the environment: one line, here
    for name, values in vary:
        variants = [{**variant, name: value} for variant in variants for value in values]
    return variants, notes


def switches_text(chosen: Mapping[str, str]) -> str:
    """Measuring switches as one line: `QBENCH_LEAN_GEMV=auto, QBENCH_LEAN_FOLD=on`."""
    return ", ".join(f"{k}={v}" for k, v in chosen.items())


def varied_text(chosen: Mapping[str, str], vary: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    """The varied switches of one setting, as `QBENCH_LEAN_FOLD=on` (progress lines name sessions by it)."""
    return switches_text({name: chosen[name] for name, _ in vary})


# The code whose change changes what a session times: the decode loop and its positions, the session's
# order of blocks and prefills, the runtimes and their kernels, building the model, the backends and
# their formats. Its digest is part of the
# cell key beside qbench's version, so a resumed run never pools sessions from before and after a
# kernel change made without a version bump. Orchestration, storage and reporting are left out:
# changing them changes no measured step.
MEASURED_CODE = (
    "session/decode.py", "session/positions.py", "session/run.py", "backend.py", "model/build.py", "quantlinear.py",
    "runtimes/*.py", "runtimes/kernels/*.py",
)


@cache
def measured_code_digest() -> str:
    """sha256 (16 hex digits) of the measured code's sources, as installed (MEASURED_CODE and every
    module of qbench.backends)."""
    import qbench
    import qbench.backends

    root = Path(qbench.__file__).parent
    found = {path for pattern in MEASURED_CODE for path in root.glob(pattern)}
    files = sorted((path.relative_to(root).as_posix(), path) for path in found)
    for folder in qbench.backends.__path__:
        files += sorted((f"backends/{path.name}", path) for path in Path(folder).glob("*.py"))
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def check(varied: Iterable[str] = ()) -> None:
    """Read every variable above once, raising the first UserError: for the parent, before any
    worker starts (a worker would otherwise fail every session, or write into its scratch).
    `varied`: measuring switches `compare --vary` sets itself, whatever the environment says."""
    cache_dir()
    kernel_cache()
    lock_dir()
    cache_limit_bytes()
    varied = set(varied)
    measure_settings({k: v for k, v in os.environ.items() if k not in varied})
