"""Runtimes: what turns a backend's weights into a token, behind the Runner protocol (qbench.api).

  hf        transformers with the decoder's linear layers swapped (what people deploy with transformers)
  lean      qbench's own static-cache decoder (qbench.runtimes.lean): what the kernel can do
  llamacpp  llama.cpp's engine in its own process, brought by the llamacpp-* backends' `load()`

The registry maps a name to a `Runtime` record: the runner class as a "module:Class" path (imported
only when a model is loaded, so listing or reporting never imports torch), its place in tables, its
one-line label and what it needs. Callers ask the record (`linear`, `compiles`, `order`, `label`),
never compare names. Every record is made by `register_runtime`: the built-in ones in BUILT_IN below
(a new built-in runtime is its file plus one line there), a plugin's through the `qbench.runtimes`
entry-point group, whose entry names the record (README, "Extending qbench").

Names are unique, as for backends (qbench.registry): a plugin that registers a built-in name is
ignored with a warning naming its distribution; two plugins that register one name make it unusable
until one is uninstalled. A plugin's module is imported only after a child process imported it
cleanly (qbench.plugins' probe), so one that hangs or ends the process at import costs its own
runtime only. A name no record registers (a plugin backend's own engine, a store from elsewhere) is
still shown: last, labelled as a plugin's runtime.
"""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

GROUP = "qbench.runtimes"
NAME = re.compile(r"[a-z][a-z0-9_-]*")
RUNNER_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
UNREGISTERED_ORDER = 1000  # where a runtime no record names sorts: after every registered one


@dataclass(frozen=True)
class Runtime:
    name: str
    runner: str  # "module:Class" of the runner; imported by runner_class(), never at registration
    label: str  # one line saying what it is, shown beside tables ("lean = qbench's own ...")
    order: int  # tables list runtimes by it (hf first: the runtime the others are compared with)
    # a linear runtime runs any linear-format backend's modules: --runtimes chooses it, and the
    # backend's `load()` builds its runner with `runner_class().around(model, options, backend)`;
    # else it is an engine that the backends naming it in `Backend.runtimes` bring themselves
    linear: bool = True
    compiles: bool = False  # on CUDA it compiles its step: sessions preload torch.compile's modules
    # it reads the measuring switches (qbench.settings.MEASURE_VARIABLES, QBENCH_LEAN_*): `compare --vary`
    # measures its cells once a value; a runtime that does not read them is measured once
    reads_switches: bool = False

    def runner_class(self) -> type:
        module, _, attribute = self.runner.partition(":")
        return getattr(importlib.import_module(module), attribute)


def register_runtime(
    name: str,
    runner: str,
    *,
    label: str,
    order: int = 100,
    linear: bool = True,
    compiles: bool = False,
    reads_switches: bool = False,
) -> Runtime:
    """The record of one runtime: what BUILT_IN holds and what a `qbench.runtimes` entry point names.

    `runner` is the runner class as "package.module:Class" (imported when a model loads); a linear
    runtime's class has `around(model, options, backend)` (qbench.runtimes.hf.DecoderRunner's is
    the one to inherit). Raises ValueError on a malformed name or path."""
    if not NAME.fullmatch(name):
        raise ValueError(f"runtime name {name!r}: lower-case letters, digits, '-' and '_', starting with a letter")
    if not RUNNER_PATH.fullmatch(runner):
        raise ValueError(f"runtime {name}: runner {runner!r} is not 'package.module:Class'")
    if not label.strip() or not label.isprintable():
        raise ValueError(f"runtime {name}: the label is one non-empty line of printable characters")
    return Runtime(name, runner, label, int(order), bool(linear), bool(compiles), bool(reads_switches))


BUILT_IN = {
    runtime.name: runtime
    for runtime in (
        register_runtime(
            "hf",
            "qbench.runtimes.hf:DecoderRunner",
            label="hf = transformers with the decoder's linear layers swapped",
            order=0,
        ),
        register_runtime(
            "lean",
            "qbench.runtimes.lean:LeanRunner",
            label="lean = qbench's own static-cache decoder (`qbench/runtimes/lean.py`)",
            order=1,
            compiles=True,
            reads_switches=True,
        ),
        register_runtime(
            "llamacpp",
            "qbench.backends.llamacpp:LlamaCppRunner",
            label="llamacpp = llama.cpp's engine in its own process",
            order=2,
            linear=False,
        ),
    )
}
DEFAULT = "hf"  # --runtimes' default, and the runtime every other one's speed is compared with


@dataclass
class Found:
    runtimes: dict[str, Runtime]
    unusable: dict[str, str]  # name -> why it cannot be used (a clash, a plugin that failed)
    warnings: list[str]


_found: dict[tuple[str, ...], Found] = {}  # sys.path -> what it registers (read once per path)


def registry() -> Found:
    """Every runtime: the built-in ones, then the plugins' (a plugin's module imported once it
    probed cleanly). Read once for each sys.path."""
    key = tuple(sys.path)
    if key not in _found:
        _found.clear()
        _found[key] = _read_registry()
    return _found[key]


def _read_registry() -> Found:
    from qbench import plugins

    found = Found(dict(BUILT_IN), {}, [])
    claims: dict[str, list] = {}
    for entry in entry_points(group=GROUP):
        known = claims.setdefault(entry.name, [])
        if all(entry.value != other.value for other in known):  # one package seen twice on the path
            known.append(entry)
    for name, entries in sorted(claims.items()):
        owners = " and ".join(f"{plugins.distribution(e)} ({e.value})" for e in entries)
        if name in BUILT_IN:
            found.warnings += [
                f"runtime {name!r} registered by {plugins.distribution(e)} ({e.value}) is ignored: "
                f"{name} is qbench's built-in runtime; register the plugin under another name"
                for e in entries
            ]
        elif len(entries) > 1:
            found.unusable[name] = f"runtime name {name!r} is registered by both {owners}: uninstall one of them"
        else:
            (entry,) = entries
            broken = f"runtime {name} ({entry.value}, from {owners}) failed to import: "
            third_party = [e.value for other in claims.values() for e in other if e.name not in BUILT_IN]
            try:
                record = plugins.import_entry(entry, third_party, broken)
                if not isinstance(record, Runtime) or record.name != name:
                    raise ValueError(f"its entry names {record!r}, not the register_runtime({name!r}, ...) record")
            except Exception as error:  # UserError from the probe, or a wrong record
                reason = str(error) if str(error).startswith(broken) else broken + str(error)
                found.unusable[name] = reason
                found.warnings.append(reason)
                continue
            found.runtimes[name] = record
    return found


def warnings() -> list[str]:
    """Plugin runtimes ignored or unusable, one line each."""
    return registry().warnings


def runtime_names() -> list[str]:
    """Every usable runtime, in table order."""
    return [r.name for r in sorted(registry().runtimes.values(), key=lambda r: (r.order, r.name))]


def linear_runtimes() -> tuple[str, ...]:
    """The runtimes --runtimes may name: those every linear-format backend runs under, in table order."""
    found = registry().runtimes
    return tuple(name for name in runtime_names() if found[name].linear)


def get_runtime(name: str) -> Runtime:
    """The record of `name`; a name no record registers (a plugin backend's own engine, a stored
    session from elsewhere) gets one that sorts last, says it is a plugin's, and is not linear."""
    found = registry().runtimes
    if name in found:
        return found[name]
    return Runtime(name, "", f"{name} = a plugin's runtime", UNREGISTERED_ORDER, linear=False)


def sort_key(name: str) -> tuple[int, str]:
    """Where rows of runtime `name` go in a table."""
    return get_runtime(name).order, name


def load_runner(name: str, model: Any, options: Any, backend: Any) -> Any:
    """The runner of linear runtime `name` around `model`, whose linear layers `backend` swapped."""
    runtime = get_runtime(name)
    assert runtime.linear, f"{name} is not a linear runtime"
    return runtime.runner_class().around(model, options, backend)
