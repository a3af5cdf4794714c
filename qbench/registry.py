"""Backends are found through the `qbench.backends` entry-point group, built-in ones included.

Listing names reads package metadata only; a backend's module is imported when it is asked for, and
its heavy packages only when it loads a model.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from qbench.backend import Backend
from qbench.errors import UserError
from qbench.specs import did_you_mean

GROUP = "qbench.backends"
BUILT_IN_ORDER = ("bf16", "bnb-nf4", "awq-marlin", "gptq-exllamav2", "torch-int4")


def _entry_points() -> dict:
    found = {}
    for entry in entry_points(group=GROUP):
        found.setdefault(entry.name, entry)  # the first installed distribution wins
    return found


def backend_names() -> list[str]:
    names = list(_entry_points())
    built_in = [n for n in BUILT_IN_ORDER if n in names]
    return built_in + sorted(n for n in names if n not in BUILT_IN_ORDER)


def load_backend(name: str) -> Backend:
    entries = _entry_points()
    if name not in entries:
        raise UserError(
            f"unknown backend {name!r}",
            f"{did_you_mean(name, list(entries))}installed: {', '.join(backend_names())}",
        )
    entry = entries[name]
    try:
        backend_class = entry.load()
    except Exception as error:  # a plugin's import error is the plugin's, reported in one line
        raise UserError(f"backend {name} ({entry.value}) failed to import: {error}") from None
    backend = backend_class()
    if not isinstance(backend, Backend):
        raise UserError(f"backend {name} ({entry.value}) is not a qbench.backend.Backend subclass")
    return backend
