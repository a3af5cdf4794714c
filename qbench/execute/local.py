"""`qbench compare` on this machine: each session in a fresh worker (qbench.execute.worker), one at a
time, holding the device's lock (qbench.execute.lock) while its worker runs, so two qbench processes
never time blocks on one device at once; every result is stored as it comes."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable

from qbench.backend import DeviceInfo
from qbench.errors import Interrupted, Stop
from qbench.execute.lock import device_lock
from qbench.execute.progress import (
    RunOutcome,
    bar,
    counted_rows,
    result_status,
    session_label,
    store_result,
    to_stderr,
)
from qbench.execute.worker import Forkserver, remove_stale_scratch, run_worker
from qbench.plan import (
    CompareConfig,
    Plan,
    check_inputs,
    check_runnable,
    device_key,
    plan,
    probe_device,
    session_jobs,
    stored_for_resume,
    stored_session,
)
from qbench.store import Store


def start_forkserver(the_plan: Plan, progress: Callable[[str], None]) -> Forkserver | None:
    """One preloaded process that forks each session (qbench.execute.worker), or None where it cannot start
    (then every session spawns a new interpreter, as the line printed says) or QBENCH_FORKSERVER=0."""
    if os.environ.get("QBENCH_FORKSERVER", "1") == "0":
        return None
    try:  # what it preloads was resolved while planning: the model's code, the backends, torch.compile's
        server = Forkserver(list(the_plan.model_types), the_plan.backends, the_plan.compiler)
    except (RuntimeError, OSError) as error:
        progress(f"note: {error}; each session starts a new interpreter instead")
        return None
    progress(f"forkserver ready: torch, {', '.join(server.preloaded)} imported once ({server.preload_s:.1f} s)")
    for note in server.notes:
        progress(f"note: forkserver: {note}")
    return server


def run_compare(
    the_plan: Plan,
    command: str,
    progress: Callable[[str], None] = to_stderr,
) -> RunOutcome:
    """Run every session of the plan. The run is recorded when its first session is; with --resume,
    stored sessions of the same configuration are counted (and linked to the run) instead of run.
    Ctrl-C or a Stop kills the running worker and raises Interrupted; what was stored stays."""
    config = the_plan.config
    store = Store(config.db)
    outcome = RunOutcome(None, [])
    jobs = session_jobs(the_plan)
    stored = stored_for_resume(store, jobs, config.resume, progress)
    reused: list[int] = []
    started = time.monotonic()
    total = len(jobs)
    holder = f"qbench pid {os.getpid()} ({command[:80]})"
    to_run = sum(1 for session, cell in jobs if stored_session(stored, session, cell) is None)
    server = start_forkserver(the_plan, progress) if to_run > 1 else None
    try:
        for number, (session, cell) in enumerate(jobs, 1):
            label = session_label(the_plan, session)
            earlier = stored_session(stored, session, cell)
            if earlier is not None:
                reused.append(earlier)
                progress(f"{bar(number, total)} {label}: already stored, skipped (--resume)")
                continue
            began = time.monotonic()
            run = server.run if server is not None and server.alive() else run_worker
            with device_lock(device_key(the_plan.device), holder, on_wait=lambda line: progress(f"  {line}")):
                result = run(session, config.timeout, on_progress=lambda line, tag=label: progress(f"  {tag}: {line}"))
            store_result(store, outcome, command, the_plan, cell, session, result)
            outcome.measured += 1
            eta = (time.monotonic() - started) / outcome.measured * (total - number)  # from sessions run
            progress(
                f"{bar(number, total)} {label}: {result_status(result)} "
                f"({time.monotonic() - began:.0f} s; ETA {eta:.0f} s)"
            )
    except (KeyboardInterrupt, Stop) as stop:
        name = stop.signal_name if isinstance(stop, Stop) else "SIGINT"
        raise Interrupted(name, outcome.measured, outcome.run_id, config.db) from None
    finally:  # interrupted or not: the server goes, and the run keeps the stored sessions it counted
        if server is not None:
            server.close()
        if outcome.run_id and reused:
            try:
                store.add_reused(outcome.run_id, reused)
            except sqlite3.OperationalError as error:  # a full disk: the run's own sessions stay stored
                progress(f"note: the {len(reused)} stored session(s) this run counted are not linked to it ({error})")
        store.close()
    outcome.session_ids += reused
    outcome.reused = len(reused)
    return outcome


class LocalExecutor:
    """The Executor (qbench.execute.progress) of this machine: the plans one after another, each
    announced before its first session."""

    def __init__(self, command: str, announce: Callable[[Plan], None] = lambda the_plan: None):
        self.command, self.announce = command, announce

    def run(self, plans: list[Plan], progress: Callable[[str], None] = to_stderr) -> list[RunOutcome]:
        outcomes = []
        for the_plan in plans:
            self.announce(the_plan)
            outcomes.append(run_compare(the_plan, self.command, progress))
        return outcomes


def run_sweep(
    configs: list[CompareConfig],
    device: DeviceInfo | None,
    command: str,
    announce: Callable[[Plan], None] = lambda the_plan: None,
) -> tuple[list[RunOutcome], list[dict]]:
    """Plan every config (one per model) first, so bad input stops the sweep before any worker
    starts; then run each. Returns the outcomes and the table rows of exactly the sessions this
    command measured or (with --resume) counted. `device` None: probed once, after every config's
    model and weights are checked (a bad config.json is named without waiting for the probe)."""
    checked = [check_inputs(config) for config in configs] if device is None else [None] * len(configs)
    device = device or probe_device()
    plans = [plan(config, device, inputs) for config, inputs in zip(configs, checked, strict=True)]
    check_runnable(plans)
    remove_stale_scratch()
    outcomes = LocalExecutor(command, announce).run(plans)
    return outcomes, counted_rows(configs[0].db, outcomes)
