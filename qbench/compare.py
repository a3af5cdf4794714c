"""`qbench compare`: plan the sessions (qbench.plan), run each in a fresh worker and store every
result (an executor: qbench.execute.local here, qbench.execute.ray on a cluster).

This module only gathers the names the CLI and earlier callers import from `qbench.compare`.
"""

from __future__ import annotations

from qbench.execute.local import LocalExecutor, run_compare, run_sweep, start_forkserver
from qbench.execute.progress import (
    Executor,
    RunOutcome,
    as_result,
    bar,
    counted_rows,
    result_status,
    resume_command,
    session_label,
    store_result,
)
from qbench.plan import (
    AB_SESSIONS,
    GRAPHS_CHOICES,
    GROUP_SIZES,
    MAX_CTX,
    MAX_PLAN_SESSIONS,
    MAX_ROUNDS,
    MAX_SEED,
    MAX_SESSIONS,
    MAX_STEPS,
    MAX_TIMEOUT_S,
    MAX_WARMUP,
    QUICK_SESSIONS,
    CompareConfig,
    GpuNotHere,
    Plan,
    cell_hash,
    check_cpu_option,
    check_ctx,
    check_group_size,
    check_inputs,
    check_runnable,
    detected_gpu,
    device_key,
    graphs_modes,
    needs_compiler,
    plan,
    planned_sessions,
    predict_command,
    probe_device,
    resolve_gpu,
    resolve_group_size,
    session_config,
    session_jobs,
    sessions_for,
    stored_for_resume,
    stored_session,
)

__all__ = [
    "AB_SESSIONS", "GRAPHS_CHOICES", "GROUP_SIZES", "MAX_CTX", "MAX_PLAN_SESSIONS", "MAX_ROUNDS", "MAX_SEED",
    "MAX_SESSIONS", "MAX_STEPS", "MAX_TIMEOUT_S", "MAX_WARMUP", "QUICK_SESSIONS", "CompareConfig", "Executor",
    "GpuNotHere", "LocalExecutor", "Plan", "RunOutcome", "as_result", "bar", "cell_hash", "check_cpu_option",
    "check_ctx", "check_group_size", "check_inputs", "check_runnable", "counted_rows", "detected_gpu", "device_key",
    "graphs_modes", "needs_compiler", "plan", "planned_sessions", "predict_command", "probe_device", "resolve_gpu",
    "resolve_group_size", "result_status", "resume_command", "run_compare", "run_sweep", "session_config",
    "session_jobs", "session_label", "sessions_for", "start_forkserver", "store_result", "stored_for_resume",
    "stored_session",
]  # fmt: skip
