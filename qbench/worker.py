"""A fresh process per session, so a crash, hang or out-of-memory costs one session and no more.

Child side:  python -m qbench.worker CONFIG.json RESULT.json   (writes RESULT.json, exits 0)
Parent side: `run_worker()` starts the child in its own process group, relays its progress lines
(first-run kernel builds), enforces the timeout and turns whatever happened (a result, a signal, an
exit code, a timeout) into one result dict.

Nothing is left running. If the parent is interrupted (Ctrl-C, SIGTERM) it kills the child's whole
process group (compilers it started included) and removes the scratch folder before the interrupt
goes on. If the parent dies without a chance to do so (SIGKILL), the kernel sends the child SIGTERM
(PR_SET_PDEATHSIG) and the child removes the scratch folder and kills its own group. A scratch
folder whose owner is gone all the same is removed by the next run (`remove_stale_scratch`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qbench.errors import UserError

SCRATCH_PREFIX = "qbench-"
OWNER_FILE = "owner.pid"  # the parent's pid, so a later run can tell an orphaned scratch folder
PROGRESS_MARK = "[qbench-progress] "  # worker lines the parent shows the user as they come
POLL_S = 0.5


def failed(status: str, reason: str) -> dict[str, Any]:
    return {"status": status, "reason": reason, "blocks": []}


def progress(message: str) -> None:
    """Child side: a line the parent relays to the user while the session runs."""
    print(PROGRESS_MARK + message, file=sys.stderr, flush=True)


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    text = [line for line in text if not line.startswith(PROGRESS_MARK)] or text
    return " | ".join(text[-lines:])[:400]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_scratch() -> list[str]:
    """Remove scratch folders left by qbench processes that no longer exist; returns their paths."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(SCRATCH_PREFIX + "*"):
        try:
            owner = int((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not _alive(owner):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    return removed


def _kill_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()


class _LogRelay:
    """Reads the worker's log as it grows and hands progress lines to `on_progress`."""

    def __init__(self, path: Path, on_progress: Callable[[str], None] | None):
        self.path, self.on_progress, self.offset, self.partial = path, on_progress, 0, ""

    def poll(self) -> None:
        if self.on_progress is None:
            return
        try:
            with open(self.path, errors="replace") as log:
                log.seek(self.offset)
                text = log.read()
                self.offset = log.tell()
        except OSError:
            return
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        for line in lines:
            if line.startswith(PROGRESS_MARK):
                self.on_progress(line[len(PROGRESS_MARK) :])


def run_worker(
    config_json: str,
    timeout_s: float,
    log_path: Path | None = None,
    env: dict | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> dict:
    """Run one session in a child process; never raises for what happens inside the child.

    An interrupt of the parent (KeyboardInterrupt, or any exception while waiting) kills the
    child's process group and removes the scratch folder, then propagates."""
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX) as scratch:
        (Path(scratch) / OWNER_FILE).write_text(str(os.getpid()))
        config_path = Path(scratch) / "config.json"
        result_path = Path(scratch) / "result.json"
        log_path = log_path or Path(scratch) / "worker.log"
        config_path.write_text(config_json)
        child_env = dict(os.environ if env is None else env, QBENCH_PARENT_PID=str(os.getpid()))
        with open(log_path, "w") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "qbench.worker", str(config_path), str(result_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killing it kills compilers it spawned too
                env=child_env,
                cwd=scratch,  # never import a source checkout from the caller's directory by accident
            )
            relay = _LogRelay(log_path, on_progress)
            deadline = time.monotonic() + timeout_s
            try:
                while (code := child.poll()) is None:
                    relay.poll()
                    if time.monotonic() > deadline:
                        _kill_group(child)
                        return failed("timeout", f"no result after {timeout_s:g} s (--timeout); killed")
                    time.sleep(POLL_S)
                relay.poll()
            except BaseException:
                _kill_group(child)
                raise
        if result_path.exists():
            return json.loads(result_path.read_text())
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (likely out of host memory)" if name == "SIGKILL" else ""
            return failed("crashed", f"worker killed by {name}{hint}; last output: {_tail(log_path)}")
        return failed("crashed", f"worker exited with code {code} and no result; last output: {_tail(log_path)}")


def _die_with_parent(scratch: Path) -> None:
    """Child side: if the parent dies, remove the scratch folder and kill this process group."""

    def on_term(signum, frame):  # the parent died (PR_SET_PDEATHSIG) or someone asked us to stop
        shutil.rmtree(scratch, ignore_errors=True)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    signal.signal(signal.SIGTERM, on_term)
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass
    parent = os.environ.get("QBENCH_PARENT_PID")
    if parent and os.getppid() != int(parent):  # the parent died before prctl took effect
        on_term(signal.SIGTERM, None)


def _child(config_path: str, result_path: str) -> None:
    _die_with_parent(Path(config_path).parent)
    from qbench.session import SessionConfig, run_session

    config = SessionConfig.from_json(Path(config_path).read_text())
    try:
        result = run_session(config)
    except UserError as error:
        result = failed("unavailable", str(error))
    except Exception as error:
        import torch

        if isinstance(error, torch.OutOfMemoryError):
            result = failed("oom", str(error).splitlines()[0][:300])
        else:
            traceback.print_exc()
            result = failed("failed", f"{type(error).__name__}: {error}"[:500])
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
