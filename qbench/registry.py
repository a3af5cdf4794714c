"""Backends are found through the `qbench.backends` entry-point group, built-in ones included.

Listing names reads package metadata only; a backend's module is imported when it is asked for, and
its heavy packages only when it loads a model.

Names are unique. A plugin that registers a built-in name (say `bf16`, the baseline of every ratio)
is ignored with a warning naming its distribution: the built-in stays. Two plugins that register
the same name make that name unusable until one is uninstalled; the error names both. Which entry
wins never depends on the order of folders on disk.

A plugin cannot take qbench down. Built-in backends are trusted and imported directly. Before the
first third-party backend is imported, a child process (`_probe`) imports every third-party entry
point, one after another, each within PLUGIN_IMPORT_S: one that raises anything (SystemExit and
KeyboardInterrupt included), hangs, or ends the process (os._exit, a crash) is listed unavailable
with that reason, and the rest run. Only those that imported cleanly there are imported here, with
stdout sent to stderr so that what a plugin prints never mixes with qbench's output (`--format
json`). A child is the only place where `os._exit` and a hang can be survived; and the child, in a
session of its own, receives no Ctrl-C from the terminal, so a KeyboardInterrupt there is the
plugin's, while a Ctrl-C of the user reaches this process and stops qbench as ever. Worker
processes (qbench.execute.worker) skip the probe (`probe_plugins = False`): a plugin that breaks one costs
that session only, and the run had probed it already.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

from qbench import DISTRIBUTION
from qbench.backend import Backend
from qbench.errors import Stop, UserError
from qbench.plugins import describe, distribution, import_entry, stdout_to_stderr
from qbench.specs import did_you_mean

GROUP = "qbench.backends"
# The order `qbench backends` and the tables list the built-in backends in. A built-in backend is any
# entry of qbench's own distribution under qbench.backends (setup.cfg): one missing here is still
# built-in, listed after these by name (README, "Extending qbench").
BUILT_IN_ORDER = (
    *("bf16", "bnb-nf4", "awq-marlin", "gptq-exllamav2", "torch-int4"),
    *("fp8-wo", "fp8-dyn", "int8-wo", "gemlite-int4"),
    *("llamacpp-f16", "llamacpp-q8_0", "llamacpp-q4_0", "llamacpp-q4_k_m"),
)
BUILT_IN_MODULE = "qbench.backends."



def _is_built_in(entry: EntryPoint) -> bool:
    dist = getattr(entry, "dist", None)
    own = dist is not None and re.sub(r"[-_.]+", "-", dist.name).lower() == DISTRIBUTION
    return own and entry.value.startswith(BUILT_IN_MODULE)


def is_built_in(name: str) -> bool:
    """Whether backend `name` is one of qbench's own (trusted, never announced as a plugin)."""
    entry = registry().entries.get(name)
    return entry is not None and _is_built_in(entry)


@dataclass
class Registry:
    entries: dict[str, EntryPoint] = field(default_factory=dict)
    clashes: dict[str, str] = field(default_factory=dict)  # name -> why it cannot be used
    warnings: list[str] = field(default_factory=list)


def registry() -> Registry:
    claims: dict[str, list[EntryPoint]] = {}
    for entry in entry_points(group=GROUP):
        known = claims.setdefault(entry.name, [])
        if all(entry.value != other.value for other in known):  # one package seen twice on the path
            known.append(entry)
    found = Registry()
    for name, entries in sorted(claims.items()):
        built_in = [e for e in entries if _is_built_in(e)]
        others = [e for e in entries if not _is_built_in(e)]
        if built_in:
            found.entries[name] = built_in[0]
            for entry in others:
                found.warnings.append(
                    f"backend {name!r} registered by {distribution(entry)} ({entry.value}) is ignored: "
                    f"{name} is qbench's built-in backend; register the plugin under another name"
                )
        elif len(others) == 1:
            found.entries[name] = others[0]
        else:
            owners = " and ".join(f"{distribution(e)} ({e.value})" for e in others)
            found.clashes[name] = f"backend name {name!r} is registered by both {owners}: uninstall one of them"
    return found


def backend_names() -> list[str]:
    found = registry()
    names = list(found.entries) + list(found.clashes)
    own = sorted(n for n in found.entries if _is_built_in(found.entries[n]))
    built_in = [n for n in BUILT_IN_ORDER if n in own] + [n for n in own if n not in BUILT_IN_ORDER]
    return built_in + sorted(n for n in names if n not in built_in)


def warnings() -> list[str]:
    return registry().warnings


def load_backend(name: str) -> Backend:
    found = registry()
    if name in found.clashes:
        raise UserError(found.clashes[name])
    if name not in found.entries:
        raise UserError(
            f"unknown backend {name!r}",
            f"{did_you_mean(name, list(found.entries))}installed: {', '.join(backend_names())}",
        )
    entry = found.entries[name]
    broken = f"backend {name} ({entry.value}, from {distribution(entry)}) failed to import: "
    plugins = [e.value for e in found.entries.values() if not _is_built_in(e)]
    backend_class = import_entry(entry, plugins, broken, probe=not _is_built_in(entry))
    if not (isinstance(backend_class, type) and issubclass(backend_class, Backend)):
        raise UserError(f"backend {name} ({entry.value}) is not a qbench.backend.Backend subclass")
    try:
        with stdout_to_stderr():
            return backend_class()
    except (KeyboardInterrupt, Stop, UserError):  # the user's Ctrl-C or SIGTERM stops qbench
        raise
    except BaseException as error:  # whatever a plugin raises is the plugin's, reported in one line
        raise UserError(broken + describe(error)) from None


