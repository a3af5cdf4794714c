"""`qbench compare --executor ray`: the same sessions, each a Ray task on a node with the GPU it names.

The driver (this process) checks and plans as a local run does, with one difference: the device a
plan is checked against is probed on a node of the requested type, not here. Each session is one
Ray task that asks for one GPU of its type and, on the node Ray places it on, probes the device it
was given, refuses one that is not the requested spec, holds the device's lock (qbench.execute.lock) and
runs the same worker as a local run (qbench.execute.worker.run_worker: a fresh process per session). The
driver stores each result as it arrives, so what finished is kept whatever happens to the rest.

Which resource a GPU type is asked for by:
  qbench-gpu:<spec>           a custom resource that nodes advertise (`ray start --resources
                              '{"qbench-gpu:l4": 1}'`), used whenever any node of the cluster does;
  accelerator_type:<label>    else Ray's own label for the spec (qbench/data/gpus `ray_accelerator_type`:
                              L4, A100, H100, ...), with one GPU. Ray's label does not tell an A100
                              40GB from an 80GB one, or an H100 SXM from a PCIe one: the node's own
                              check refuses a session placed on the wrong one, and the custom
                              resource avoids it.
CPU types (`cpu-<label>`, qbench.specs) are asked for by the custom resource only.

Sessions are never retried by Ray (max_retries=0). A session whose node or worker dies is stored
as crashed with the reason, and `--resume` runs it again: a loss stays visible, and a session that
takes its node down (host out of memory) does not take a second one down with it on a retry.
Sessions of a type that no live node offers any more are cancelled and not stored (`--resume` runs
them too). Ctrl-C cancels every unfinished task, killing running ones with their worker's process
group (PR_SET_PDEATHSIG, qbench.execute.worker); a session that had finished is stored. A finished
task is never cancelled (cancel_unfinished: in Ray that can abort the driver).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from qbench import DISTRIBUTION, __version__
from qbench.backend import DeviceInfo
from qbench.errors import Interrupted, Stop, UserError
from qbench.execute.lock import device_lock
from qbench.execute.progress import (
    RunOutcome,
    as_result,
    bar,
    counted_rows,
    result_status,
    session_label,
    store_result,
    to_stderr,
)
from qbench.execute.worker import failed, remove_stale_scratch, run_worker
from qbench.plan import (
    CompareConfig,
    Plan,
    check_inputs,
    check_runnable,
    detected_gpu,
    device_key,
    plan,
    probe_device,
    session_jobs,
    stored_for_resume,
    stored_session,
)
from qbench.records import SessionConfig
from qbench.specs import GpuSpec, is_cpu_name, load_gpu_spec
from qbench.store import Store

RESOURCE_PREFIX = "qbench-gpu:"
POLL_S = 2.0  # how often the driver looks at the cluster while no result comes
PROBE_WAIT_S = 600.0  # a node of the type may be busy with another run's session
GONE_GRACE_S = 10.0  # a type's last node gone: time for its running tasks' errors to arrive first
CANCEL_WAIT_S = 30.0
CONNECT_TIMEOUT_S = 5.0


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"missing package ray: pip install '{DISTRIBUTION}[ray]'") from None
    return ray


def _device_text(device: DeviceInfo, spec_name: str) -> str:
    """`NVIDIA L4 (l4)`; a CPU's device name is its spec's already."""
    return device.name if device.name == spec_name else f"{device.name} ({spec_name})"


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:300]


# ---- the cluster --------------------------------------------------------------------------------
def check_reachable(address: str) -> None:
    """A host:port that answers, before ray.init, which retries an unreachable head for a minute."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port: left to Ray, which says what it expected
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise UserError(
            f"--address {address}: cannot reach the Ray head ({error.strerror or error})",
            "start it with `ray start --head` and pass the address it prints (host:6379)",
        ) from None


def connect(ray, address: str | None) -> bool:
    """Connect to the cluster at `address` (None: $RAY_ADDRESS, else a new local instance); returns
    whether this call connected (and so should disconnect)."""
    if ray.is_initialized():
        return False
    if address and address not in ("auto", "local"):
        check_reachable(address)
    try:
        # Nodes' output stays in their logs: each session's own output is in its result.
        ray.init(address=address or None, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise UserError(
            f"cannot connect to the Ray cluster at {address or 'RAY_ADDRESS or a new local instance'}: "
            f"{_first_line(error)}",
            "check --address (the head's host:port, from `ray start --head`)",
        ) from None
    return True


@dataclass(frozen=True)
class Placement:
    """What each task of one GPU type asks Ray for."""

    gpu: GpuSpec
    resource: str  # the resource that says a node has the type: qbench-gpu:l4 or accelerator_type:L4
    options: dict = field(default_factory=dict)  # for ray.remote(...).options


def placement_for(gpu: GpuSpec, available: dict[str, float]) -> Placement:
    """The custom resource where any node advertises it, else Ray's accelerator label (see the module)."""
    custom = RESOURCE_PREFIX + gpu.name
    gpus = 0 if is_cpu_name(gpu.name) else 1
    if available.get(custom):
        return Placement(gpu, custom, {"num_gpus": gpus, "resources": {custom: 1}})
    label = gpu.ray_accelerator_type
    if label and available.get(f"accelerator_type:{label}"):
        return Placement(gpu, f"accelerator_type:{label}", {"num_gpus": 1, "accelerator_type": label})
    asked = custom + (f" or accelerator_type:{label}" if label else "")
    raise UserError(
        f"no node of the Ray cluster offers {asked} (--gpu {gpu.name})",
        f"""on each such node: ray start --address HEAD --resources '{{"{custom}": N}}' (N: its {gpu.name} count)""",
    )


def nodes_offering(ray, resource: str) -> int:
    return sum(1 for node in ray.nodes() if node.get("Alive") and node.get("Resources", {}).get(resource))


# ---- on the node --------------------------------------------------------------------------------
def node_identity() -> dict:
    import ray

    return {
        "host": socket.gethostname(),
        "ip": ray.util.get_node_ip_address(),
        "ray_node_id": ray.get_runtime_context().get_node_id(),
    }


def probe_on_node() -> dict:
    """A Ray task: the device this node gives a task of the type, and who the node is."""
    node = {**node_identity(), "qbench": __version__}
    try:
        return {"device": probe_device(), "node": node}
    except UserError as error:
        return {"error": str(error), "node": node}


def session_on_node(session_json: str, gpu_name: str, timeout_s: float, holder: str) -> dict:
    """A Ray task: one session on this node, as a local run would run it, with the node named.

    The device is probed again here: Ray may place the task on another node of the type than the
    one probed while planning, and the lock names the very GPU this task was given."""
    remove_stale_scratch()
    node = node_identity()
    try:
        device = probe_device()
    except UserError as error:
        return {**failed("unavailable", str(error)), "node": node}
    have = detected_gpu(device).name
    if have != gpu_name:  # a node never measures a GPU it is not (a mislabelled node, or Ray's coarse label)
        why = f"placed on {node['host']}, whose device is {_device_text(device, have)}, not {gpu_name}"
        return {**failed("unavailable", f"{why}: give that node the resource {RESOURCE_PREFIX}{have}"), "node": node}
    with device_lock(device_key(device), holder):
        result = run_worker(session_json, timeout_s)
    return {**result.to_dict(), "node": node}  # plain JSON types back to the driver


# ---- the driver ---------------------------------------------------------------------------------
def probe_types(ray, placements: dict[str, Placement], progress: Callable[[str], None]) -> dict[str, DeviceInfo]:
    """The device a node of each type has, so each plan is checked against it (backends, graphs):
    one probe task per type, all at once."""
    refs = {
        name: ray.remote(probe_on_node).options(**placement.options, max_retries=0).remote()
        for name, placement in placements.items()
    }
    try:
        return {name: _probed(ray, refs[name], placement, progress) for name, placement in placements.items()}
    except BaseException:
        cancel_unfinished(ray, list(refs.values()))
        raise


def cancel_unfinished(ray, refs: list) -> list:
    """Cancel (force: the worker's process is killed) those of `refs` whose task has not finished;
    returns the finished ones, whose results are there to take. A finished task is never cancelled:
    in Ray (2.60) a cancel that meets the task's own completion aborts the driver ("Check failed:
    it != submissible_tasks_.end() Tried to complete task that was not pending", exit 1, said only
    in Ray's log), which one test met when a probe that had answered was cancelled with the rest."""
    if not refs:
        return []
    finished, unfinished = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
    for ref in unfinished:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # finished meanwhile, or its node already gone
            pass
    return finished


def _probed(ray, ref, placement: Placement, progress: Callable[[str], None]) -> DeviceInfo:
    name = placement.gpu.name
    try:
        answer = ray.get(ref, timeout=PROBE_WAIT_S)
    except ray.exceptions.GetTimeoutError:
        raise UserError(
            f"no node offering {placement.resource} took a task within {PROBE_WAIT_S:.0f} s",
            "its GPUs may be busy with another job; try again later",
        ) from None
    except ray.exceptions.RayError as error:
        raise UserError(f"probing a {name} node failed: {_first_line(error)}") from None
    node = answer["node"]
    if "error" in answer:
        raise UserError(f"{name} node {node['host']}: {answer['error']}")
    device = answer["device"]
    have = detected_gpu(device).name
    if have != name:
        raise UserError(
            f"Ray placed a {name} task on {node['host']}, whose device is {_device_text(device, have)}",
            f"give that node the resource {RESOURCE_PREFIX}{have}, and {name} nodes {RESOURCE_PREFIX}{name}",
        )
    progress(
        f"ray: {name} -> {placement.resource} on {nodes_offering(ray, placement.resource)} node(s); "
        f"{node['host']} has {device.name}"
    )
    if node["qbench"] != __version__:
        progress(f"note: {node['host']} runs qbench {node['qbench']}, this driver {__version__}")
    return device


@dataclass
class Job:
    """A session submitted to Ray and not yet back."""

    plan_index: int
    session: SessionConfig
    cell: str
    label: str
    placement: Placement


def lost_or_failed(ray, error: Exception) -> dict | None:
    """A task that gave no result, as a stored result; None where this driver cancelled it."""
    if isinstance(error, ray.exceptions.TaskCancelledError):
        return None
    if isinstance(error, ray.exceptions.RayTaskError):  # qbench raised on the node: this session's only
        return failed("failed", f"the session's Ray task raised {_first_line(error)}")
    # NodeDiedError, WorkerCrashedError, OwnerDiedError, ...: not counted as done, so --resume runs it again
    said = _first_line(error).split(". ")[0]  # Ray's first sentence; the rest is advice on its logs
    return failed("crashed", f"lost with its Ray node or worker ({type(error).__name__}: {said})")


class RaySweep:
    """Submits every session of the plans and stores each result as it comes back."""

    def __init__(self, ray, plans: list[Plan], placements: dict[str, Placement], command: str, progress):
        self.ray, self.plans, self.placements, self.command, self.progress = ray, plans, placements, command, progress
        self.store = Store(plans[0].config.db)
        self.outcomes = [RunOutcome(None, []) for _ in plans]
        self.reused: list[list[int]] = [[] for _ in plans]
        self.pending: dict = {}  # ObjectRef -> Job
        self.gone_since: dict[str, float] = {}  # resource -> when no live node offered it any more
        self.looked_at = time.monotonic()  # when drop_orphans last looked at the cluster
        self.done = self.total = 0
        self.started = time.monotonic()

    def run(self) -> list[RunOutcome]:
        try:
            self.submit_all()
            while self.pending:
                ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=POLL_S)
                for ref in ready:
                    self.receive(ref)
                if time.monotonic() - self.looked_at > POLL_S:  # also while other types keep finishing
                    self.drop_orphans()
        except (KeyboardInterrupt, Stop) as stop:
            for ref in self.cancel(list(self.pending)):  # a session that had finished is stored, not lost
                self.receive(ref)
            name = stop.signal_name if isinstance(stop, Stop) else "SIGINT"
            run_ids = ", ".join(o.run_id for o in self.outcomes if o.run_id) or None
            raise Interrupted(name, sum(o.measured for o in self.outcomes), run_ids, self.plans[0].config.db) from None
        except BaseException:
            self.cancel(list(self.pending))  # nothing of this run keeps running after it
            raise
        finally:
            for outcome, reused in zip(self.outcomes, self.reused, strict=True):
                if outcome.run_id and reused:
                    self.store.add_reused(outcome.run_id, reused)
            self.store.close()
        for outcome, reused in zip(self.outcomes, self.reused, strict=True):
            outcome.session_ids += reused
            outcome.reused = len(reused)
        return self.outcomes

    def submit_all(self) -> None:
        """Every session, plan by plan in the local executor's round-robin order; with --resume, the
        stored ones are counted instead. Ray runs each type's tasks in about the order submitted."""
        holder = f"qbench on {socket.gethostname()} pid {os.getpid()} ({self.command[:80]})"
        remote = self.ray.remote(session_on_node)
        for index, the_plan in enumerate(self.plans):
            config = the_plan.config
            placement = self.placements[config.gpu]
            task = remote.options(**placement.options, max_retries=0)
            jobs = session_jobs(the_plan)
            self.total += len(jobs)
            stored = stored_for_resume(self.store, jobs, config.resume, self.progress)
            for session, cell in jobs:
                label = f"{config.gpu}: {session_label(the_plan, session)}"
                earlier = stored_session(stored, session, cell)
                if earlier is not None:
                    self.reused[index].append(earlier)
                    self.done += 1
                    self.progress(f"{bar(self.done, self.total)} {label}: already stored, skipped (--resume)")
                    continue
                ref = task.remote(session.to_json(), config.gpu, config.timeout, holder)
                self.pending[ref] = Job(index, session, cell, label, placement)
        if self.pending:
            self.progress(f"ray: {len(self.pending)} session(s) submitted")

    def receive(self, ref) -> None:
        job = self.pending.pop(ref)
        try:
            raw = self.ray.get(ref)
        except self.ray.exceptions.RayError as error:
            raw = lost_or_failed(self.ray, error)
            if raw is None:
                return
        result = as_result(raw)
        the_plan = self.plans[job.plan_index]
        outcome = self.outcomes[job.plan_index]
        store_result(self.store, outcome, self.command, the_plan, job.cell, job.session, result)
        outcome.measured += 1
        self.done += 1
        measured = sum(o.measured for o in self.outcomes)
        eta = (time.monotonic() - self.started) / measured * len(self.pending)  # at the pace so far, all nodes
        host = (result.node or {}).get("host", "a lost node")
        seconds = (result.phases or {}).get("total_s")
        took = f"{seconds:.0f} s; " if seconds is not None else ""
        self.progress(
            f"{bar(self.done, self.total)} {job.label} on {host}: {result_status(result)} ({took}ETA {eta:.0f} s)"
        )

    def drop_orphans(self) -> None:
        """Tasks of a type that no live node offers any more would wait forever: cancel them (not
        stored; --resume runs them) once its running tasks have had time to report their loss."""
        available = self.ray.cluster_resources()
        now = self.looked_at = time.monotonic()
        waiting = {job.placement.resource for job in self.pending.values()}
        for resource in waiting:
            if available.get(resource):
                self.gone_since.pop(resource, None)
                continue
            if now - self.gone_since.setdefault(resource, now) < GONE_GRACE_S:
                continue
            orphans = [ref for ref, job in self.pending.items() if job.placement.resource == resource]
            finished = self.cancel(orphans)
            for ref in finished:  # came back before it could be cancelled: stored like any other
                self.receive(ref)
            for ref in (ref for ref in orphans if ref not in finished):
                job = self.pending.pop(ref)
                self.progress(f"  {job.label}: not run: no node offers {resource} any more (--resume runs it)")

    def cancel(self, refs: list) -> list:
        """Cancel the unfinished tasks and wait until each has ended: a running one's worker is
        killed, and its session's process group goes with it (PR_SET_PDEATHSIG). Returns those that
        had finished, not cancelled (cancel_unfinished)."""
        finished = cancel_unfinished(self.ray, refs)
        if refs:
            self.ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT_S)
        return finished


class RayExecutor:
    """The Executor (qbench.execute.progress) of a Ray cluster: every session of the plans at once,
    each a task on a node of its GPU type (placements), stored as it comes back."""

    def __init__(self, ray, placements: dict[str, Placement], command: str):
        self.ray, self.placements, self.command = ray, placements, command

    def run(self, plans: list[Plan], progress: Callable[[str], None] = to_stderr) -> list[RunOutcome]:
        return RaySweep(self.ray, plans, self.placements, self.command, progress).run()


def run_ray_sweep(
    configs: list[CompareConfig],
    address: str | None,
    command: str,
    announce: Callable[[Plan], None] = lambda the_plan: None,
    progress: Callable[[str], None] = to_stderr,
) -> tuple[list[RunOutcome], list[dict]]:
    """`run_sweep` on a Ray cluster: one config per (model, GPU type). Everything that needs no node
    is checked before connecting; each type's device is probed on one of its nodes before planning."""
    ray = import_ray()
    checked = []
    for config in configs:
        if config.gpu == "auto":
            raise UserError(
                "--executor ray needs the GPU types named: --gpu auto would mean the driver's own device",
                "e.g. --gpu l4,h100-sxm5 (qbench gpus lists them)",
            )
        load_gpu_spec(config.gpu)
        checked.append(check_inputs(config))
    connected = connect(ray, address)
    try:
        available = ray.cluster_resources()
        placements = {
            name: placement_for(load_gpu_spec(name), available) for name in dict.fromkeys(c.gpu for c in configs)
        }
        devices = probe_types(ray, placements, progress)
        plans = [plan(c, devices[c.gpu], inputs) for c, inputs in zip(configs, checked, strict=True)]
        check_runnable(plans, local=False)  # each node checks its own lock when a session takes it
        for the_plan in plans:
            announce(the_plan)
        outcomes = RayExecutor(ray, placements, command).run(plans, progress)
    finally:
        if connected:
            ray.shutdown()
    return outcomes, counted_rows(configs[0].db, outcomes)
