"""What both executors (qbench.execute.local, qbench.execute.ray) share while the sessions run: the
`Executor` protocol, the progress lines, a run's outcome, and storing each session's result as it
comes (kept aside where the store cannot take it)."""

from __future__ import annotations

import shlex
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Protocol

from qbench.errors import UserError
from qbench.plan import Plan, graphs_modes, reads_switches
from qbench.records import SessionConfig, SessionResult
from qbench.render.escape import for_terminal
from qbench.settings import varied_text
from qbench.store import Store, new_run_id, now


def to_stderr(line: str) -> None:
    """The default progress: each line on stderr, escaped for the terminal."""
    print(for_terminal(line), file=sys.stderr, flush=True)


def bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / total)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


@dataclass
class RunOutcome:
    run_id: str | None  # None where every session was already stored (--resume)
    session_ids: list[int]  # the sessions this command counts: measured now, and reused with --resume
    measured: int = 0
    reused: int = 0


def session_label(the_plan: Plan, session: SessionConfig) -> str:
    """How progress lines name a session: backend, runtime, graphs where it has its own process, ctx, index,
    and with --vary the values of the varied switches."""
    own_process = session.backend in the_plan.per_process and len(graphs_modes(the_plan.config, the_plan.device)) > 1
    label = session.label(the_plan.sessions, own_process)
    if the_plan.config.vary and reads_switches(session.runtime):  # which side of the A/B: the varied values
        label += f" [{varied_text(session.measure_settings, the_plan.config.vary)}]"
    return label


def as_result(raw: dict | SessionResult) -> SessionResult:
    """What a session's task gave (a worker's SessionResult, or its JSON object as a Ray task returns
    it) as a SessionResult (SessionResult.from_worker)."""
    return raw if isinstance(raw, SessionResult) else SessionResult.from_worker(raw)


def result_status(result: SessionResult) -> str:
    """A stored result as a progress line says it: its status, and why where it is not plainly ok."""
    detail = f" - {result.reason}" if result.reason else ""
    status = result.status
    failed = sorted({b["status"] for b in result.blocks if b.get("status") != "ok"})
    if status == "ok" and failed:  # the session ran; a timed block failed or the gate refused it
        status = "ok, blocks " + "/".join(failed)
        detail = " - " + "; ".join(sorted({b.get("reason", "") for b in result.blocks if b.get("reason")}))
    return status + detail


def resume_command(command: str) -> str:
    """The command line that picks a stopped run up (replicate resumes unless --fresh)."""
    try:
        words = shlex.split(command)  # as _command_line quoted it
    except ValueError:  # a command stored before it was quoted, with an unmatched quote
        words = command.split(" ")
    if "--fresh" in words:
        return shlex.join(w for w in words if w != "--fresh")
    return command if "--resume" in words or words[1:2] == ["replicate"] else command + " --resume"


def store_result(
    store: Store,
    outcome: RunOutcome,
    command: str,
    the_plan: Plan,
    cell: str,
    session: SessionConfig,
    result: SessionResult,
) -> None:
    """Store one session's result, recording the run with its first. Where the store cannot take it (a
    full disk), the result is kept in `<store>.pending/` for --resume to store, and the run stops with
    one line that says what was kept and how to resume."""
    config, gpu = the_plan.config, the_plan.gpu.name
    # the datasheet bandwidth this session's floor uses, decided now: editing a GPU file later moves no stored floor
    peak, source = the_plan.gpu.peak_bandwidth_gbps, the_plan.gpu.bandwidth_source
    result = replace(result, peak_bandwidth_gbps=peak, bandwidth_source=source)
    try:
        outcome.run_id = outcome.run_id or store.new_run(command, asdict(config))
        outcome.session_ids.append(store.add_session(outcome.run_id, cell, session, gpu, result))
        return
    except sqlite3.OperationalError as error:
        cause = str(error)
    try:
        store.db.rollback()
    except sqlite3.Error:
        pass
    again, label = resume_command(command), session_label(the_plan, session)
    run = {"run_id": outcome.run_id or new_run_id(), "created_at": now(), "command": command, "config": asdict(config)}
    try:
        kept = store.keep_pending(run, cell, session, gpu, result)
    except OSError as error:
        raise UserError(
            f"could not store {label} in {config.db} ({cause}) nor keep its result ({error.strerror}); "
            f"{outcome.measured} earlier session(s) of this run are stored",
            f"once it can be written (a full disk: free space), run: {again} (that session runs again)",
        ) from None
    raise UserError(
        f"could not store {label} in {config.db} ({cause}); its result is kept in {kept} "
        f"({outcome.measured} earlier session(s) of this run are stored)",
        f"once it can be written (a full disk: free space), run: {again} (stores the kept result, not measured again)",
    ) from None


def counted_rows(db: str, outcomes: list[RunOutcome]) -> list[dict]:
    """The table rows of exactly the sessions these outcomes measured or (with --resume) counted."""
    from qbench.report import aggregate

    store = Store(db, readonly=True)
    rows = aggregate(store.sessions(session_ids=[i for o in outcomes for i in o.session_ids]))
    store.close()
    return rows


class Executor(Protocol):
    """Runs every session of the plans, storing each result as it comes; returns one outcome per plan."""

    def run(self, plans: list[Plan], progress: Callable[[str], None] = to_stderr) -> list[RunOutcome]: ...
