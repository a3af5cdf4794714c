"""Plugins through entry points, for backends (qbench.registry) and runtimes (qbench.runtimes) alike:
which distribution registered an entry, and importing a third-party entry only after a child process
imported it cleanly (a plugin that hangs, exits or crashes at import costs its own entry, never the
run), with what it prints sent to stderr."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from importlib.metadata import EntryPoint

from qbench.errors import Stop, UserError

PLUGIN_IMPORT_S = 120.0  # one plugin's import in the probe, torch and its own packages included, on a cold disk
probe_plugins = True  # import third-party plugins in a child first (off in worker processes)
_probed: dict[str, str] = {}  # entry point value -> "" (imports cleanly) or why it cannot be imported
_probed_on: list[str] = []  # the sys.path those verdicts hold for


def distribution(entry: EntryPoint) -> str:
    dist = getattr(entry, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "an unnamed distribution"


def import_entry(entry: EntryPoint, plugins: list[str], broken: str, probe: bool = True) -> object:
    """The object an entry point names (a backend class, a runtime record). A third-party one
    (`probe`) is imported here only after the probe imported it cleanly; the probe takes `plugins`
    (entry point values) in the same child. Whatever the import raises is one UserError starting
    with `broken`."""
    if probe and probe_plugins:
        if _probed_on != sys.path:
            _probed.clear()
            _probed_on[:] = sys.path
        unprobed = list(dict.fromkeys(v for v in [entry.value, *plugins] if v not in _probed))
        _probed.update(_probe(unprobed) if unprobed else {})
        if _probed[entry.value]:
            raise UserError(broken + _probed[entry.value])
    try:
        with stdout_to_stderr():
            return entry.load()
    except (KeyboardInterrupt, Stop, UserError):  # the user's Ctrl-C or SIGTERM stops qbench
        raise
    except BaseException as error:  # whatever a plugin raises is the plugin's, reported in one line
        raise UserError(broken + describe(error)) from None


def describe(error: BaseException) -> str:
    """`ImportError: libx.so`, or `SystemExit(7)` for what is not an Exception."""
    return f"{type(error).__name__}: {error}" if isinstance(error, Exception) else repr(error)


@contextlib.contextmanager
def stdout_to_stderr():
    """What a plugin prints, from Python or from C, goes to stderr: stdout carries qbench's output."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


# The probe: imports each entry point named on its command line and reports on a copy of stdout
# (stdout itself becomes stderr, so a plugin's prints cannot corrupt the replies).
_PROBE = """
import ctypes, json, os, sys
from importlib.metadata import EntryPoint
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: a hanging import never outlives qbench
sys.path[:] = json.loads(sys.argv[1])
replies = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
for value in sys.argv[2:]:
    replies.write(json.dumps({"importing": value}) + "\\n")
    replies.flush()
    try:
        EntryPoint("probe", value, "qbench.backends").load()
        why = ""
    except Exception as error:
        why = f"{type(error).__name__}: {error}"
    except BaseException as error:
        why = repr(error)
    replies.write(json.dumps({"imported": value, "why": why[:400]}) + "\\n")
    replies.flush()
"""


def _probe(values: list[str]) -> dict[str, str]:
    """Import each entry point `values` names in a child process, within PLUGIN_IMPORT_S each:
    value -> "" where it imported cleanly, else why not. A plugin that ends or hangs the child
    is named, and the rest are probed in a new child."""
    verdicts: dict[str, str] = {}
    while left := [value for value in values if value not in verdicts]:
        verdicts.update(_probe_once(left))
    return verdicts


def _probe_once(values: list[str]) -> dict[str, str]:
    """One child for `values`; returns a verdict for at least the first of them."""
    verdicts: dict[str, str] = {}
    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen(
            [sys.executable, "-c", _PROBE, json.dumps(sys.path), *values],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            start_new_session=True,  # no Ctrl-C from the terminal; killing its group kills what a plugin started
        )
        try:
            current, pending = values[0], b""
            deadline = time.monotonic() + PLUGIN_IMPORT_S  # the child's start, then each import
            while True:
                while b"\n" not in pending:
                    left = deadline - time.monotonic()
                    ready = left > 0 and select.select([child.stdout], [], [], left)[0]
                    chunk = os.read(child.stdout.fileno(), 65536) if ready else None
                    if not chunk:
                        break
                    pending += chunk
                if b"\n" not in pending:  # the child ended, or the import ran out of time
                    if current not in verdicts:
                        if chunk is None:
                            verdicts[current] = f"its import did not finish within {PLUGIN_IMPORT_S:g} s"
                        else:
                            code = child.wait()
                            errors.seek(0)
                            said = [line for line in errors.read().splitlines() if line.strip()]
                            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                            last = f"; last output: {said[-1][:200]}" if said else ""
                            verdicts[current] = f"it ended the process at import ({how}){last}"
                    return verdicts
                line, pending = pending.split(b"\n", 1)
                reply = json.loads(line)
                if "importing" in reply:
                    current, deadline = reply["importing"], time.monotonic() + PLUGIN_IMPORT_S
                else:
                    verdicts[reply["imported"]] = reply["why"]
        finally:  # the child's group goes, with anything a plugin started at import
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            child.stdout.close()
