"""A fresh process per session, so a crash, hang or out-of-memory costs one session and no more.

Child side:  python -m qbench.worker CONFIG.json RESULT.json   (writes RESULT.json, exits 0)
Parent side: `run_worker()` starts the child in its own process group, enforces the timeout and
turns whatever happened (a result, a signal, an exit code, a timeout) into one result dict.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from qbench.errors import UserError


def failed(status: str, reason: str) -> dict[str, Any]:
    return {"status": status, "reason": reason, "blocks": []}


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])[:400]


def run_worker(config_json: str, timeout_s: float, log_path: Path | None = None, env: dict | None = None) -> dict:
    """Run one session in a child process; never raises for what happens inside the child."""
    with tempfile.TemporaryDirectory(prefix="qbench-") as scratch:
        config_path = Path(scratch) / "config.json"
        result_path = Path(scratch) / "result.json"
        log_path = log_path or Path(scratch) / "worker.log"
        config_path.write_text(config_json)
        with open(log_path, "w") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "qbench.worker", str(config_path), str(result_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a timeout kills compilers it spawned too
                env=env,
                cwd=scratch,  # never import a source checkout from the caller's directory by accident
            )
            try:
                code = child.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                return failed("timeout", f"no result after {timeout_s:g} s (--timeout); killed")
        if result_path.exists():
            return json.loads(result_path.read_text())
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (likely out of host memory)" if name == "SIGKILL" else ""
            return failed("crashed", f"worker killed by {name}{hint}; last output: {_tail(log_path)}")
        return failed("crashed", f"worker exited with code {code} and no result; last output: {_tail(log_path)}")


def _child(config_path: str, result_path: str) -> None:
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
