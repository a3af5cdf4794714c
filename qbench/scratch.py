"""What a session's parent and its worker share, below both: the scratch folder's names and the
worker's progress line. Imported by the worker (qbench.execute.worker) and by what runs inside a
session (qbench.session.run, qbench.kernels, qbench.model.cache), so none of those imports the worker."""

from __future__ import annotations

import sys

SCRATCH_PREFIX = "qbench-"
OWNER_FILE = "owner.pid"  # the parent's pid, so a later run can tell an orphaned scratch folder
PROGRESS_MARK = "[qbench-progress] "  # worker lines the parent shows the user as they come


def progress(message: str) -> None:
    """Child side: a line the parent relays to the user while the session runs."""
    print(PROGRESS_MARK + message, file=sys.stderr, flush=True)
