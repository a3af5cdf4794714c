"""Backends are found through the `qbench.backends` entry-point group, built-in ones included.

Listing names reads package metadata only; a backend's module is imported when it is asked for, and
its heavy packages only when it loads a model.

Names are unique. A plugin that registers a built-in name (say `bf16`, the baseline of every ratio)
is ignored with a warning naming its distribution: the built-in stays. Two plugins that register
the same name make that name unusable until one is uninstalled; the error names both. Which entry
wins never depends on the order of folders on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

from qbench.backend import Backend
from qbench.errors import UserError
from qbench.specs import did_you_mean

GROUP = "qbench.backends"
BUILT_IN_ORDER = (
    *("bf16", "bnb-nf4", "awq-marlin", "gptq-exllamav2", "torch-int4"),
    *("fp8-wo", "fp8-dyn", "int8-wo", "gemlite-int4"),
    *("llamacpp-f16", "llamacpp-q8_0", "llamacpp-q4_0", "llamacpp-q4_k_m"),
)
BUILT_IN_MODULE = "qbench.backends."


def _distribution(entry: EntryPoint) -> str:
    dist = getattr(entry, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "an unnamed distribution"


def _is_built_in(entry: EntryPoint) -> bool:
    return entry.name in BUILT_IN_ORDER and entry.value.startswith(BUILT_IN_MODULE)


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
                    f"backend {name!r} registered by {_distribution(entry)} ({entry.value}) is ignored: "
                    f"{name} is qbench's built-in backend; register the plugin under another name"
                )
        elif len(others) == 1:
            found.entries[name] = others[0]
        else:
            owners = " and ".join(f"{_distribution(e)} ({e.value})" for e in others)
            found.clashes[name] = f"backend name {name!r} is registered by both {owners}: uninstall one of them"
    return found


def backend_names() -> list[str]:
    found = registry()
    names = list(found.entries) + list(found.clashes)
    built_in = [n for n in BUILT_IN_ORDER if n in names]
    return built_in + sorted(n for n in names if n not in BUILT_IN_ORDER)


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
    try:
        backend_class = entry.load()
    except Exception as error:  # a plugin's import error is the plugin's, reported in one line
        raise UserError(
            f"backend {name} ({entry.value}, from {_distribution(entry)}) failed to import: "
            f"{type(error).__name__}: {error}"
        ) from None
    if not (isinstance(backend_class, type) and issubclass(backend_class, Backend)):
        raise UserError(f"backend {name} ({entry.value}) is not a qbench.backend.Backend subclass")
    return backend_class()
