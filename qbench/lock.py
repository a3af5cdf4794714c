"""One session at a time per device, across every qbench process on this host.

Two runs timing blocks on one device at once measure each other (two CPU runs turned bf16 from 2.8
to 202 ms/step). Each session holds an exclusive lock on a file named after the device (the GPU's
UUID, or `cpu`) in $QBENCH_LOCK_DIR (default: <tmp>/qbench-locks) while its worker runs; a second
run waits, and says for whom. The kernel drops a lock held by a process that dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def lock_dir() -> Path:
    folder = Path(os.environ.get("QBENCH_LOCK_DIR") or Path(tempfile.gettempdir()) / "qbench-locks")
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        folder.chmod(0o1777)  # every user's qbench shares the device, so every user shares the lock
    return folder


def lock_path(device_key: str) -> Path:
    return lock_dir() / (re.sub(r"[^A-Za-z0-9_.-]+", "_", device_key) + ".lock")


@contextlib.contextmanager
def device_lock(device_key: str, holder: str, on_wait: Callable[[str], None] = lambda line: None) -> Iterator[None]:
    """Hold the device's lock for the body; `holder` (pid and command) is written into the lock file
    for whoever waits. Waiting is interruptible (Ctrl-C)."""
    path = lock_path(device_key)
    with open(path, "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            other = file.read().strip() or "another process"
            on_wait(f"waiting for {device_key}: in use by {other}")
            began = time.monotonic()
            fcntl.flock(file, fcntl.LOCK_EX)
            on_wait(f"{device_key} free after {time.monotonic() - began:.0f} s")
        file.seek(0)
        file.truncate()
        file.write(f"{holder} (since {time.strftime('%H:%M:%S')})")
        file.flush()
        try:
            yield
        finally:
            file.seek(0)
            file.truncate()
            file.flush()
            fcntl.flock(file, fcntl.LOCK_UN)
