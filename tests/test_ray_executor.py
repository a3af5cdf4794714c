"""`qbench compare --executor ray` on a local Ray cluster of two CPU nodes, each a different type.

The nodes are labelled CPUs (QBENCH_CPU_LABEL: cpu-a and cpu-b, qbench.specs), each advertising
its type's custom resource (qbench-gpu:cpu-a, qbench-gpu:cpu-b), with its own lock folder, so the
test can tell when a node is running a session. One cluster serves the whole module: Ray takes
seconds to start. The nodes and the driver see a plugin, `gate-wait`, whose session writes a marker
when it starts loading and then waits for a release file: a test acts on the marker, never on a
guess of how long a session takes.
"""

import _thread
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from qbench.cli import main
from qbench.errors import UserError
from qbench.execute.ray import placement_for, probe_on_node, probe_types
from qbench.plan import probe_device
from qbench.specs import load_gpu_spec
from qbench.store import Store

FAST = ["--model", "tiny", "--ctx", "16", "--warmup", "1", "--steps", "2", "--backends", "bf16", "--db", "r.sqlite"]


def invoke(*args):
    return CliRunner().invoke(main, list(args))


class TwoTypes:
    """A head with no CPUs for tasks, and one node of each type (cpu-a, cpu-b)."""

    def __init__(self, folder: Path):
        from ray.cluster_utils import Cluster

        self.folder = folder
        self.site, self.gate = folder / "site", folder / "gate"
        install_gate_wait(self.site)
        self.gate.mkdir()
        # a node that stops answering is declared dead after about 2 s rather than Ray's 15 or more
        health = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}
        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": health})
        self.nodes = {label: self.add(label) for label in ("a", "b")}
        self.cluster.wait_for_nodes()

    def add(self, label: str):
        env = {
            "QBENCH_CPU_LABEL": label,
            "QBENCH_LOCK_DIR": str(self.locks(label)),
            "QBENCH_CACHE_DIR": str(self.folder / "weights-cache"),
            "QBENCH_TEST_GATE": str(self.gate),
            "PYTHONPATH": os.pathsep.join([str(self.site), os.environ.get("PYTHONPATH", "")]),
        }
        return self.cluster.add_node(num_cpus=1, resources={f"qbench-gpu:cpu-{label}": 1}, env_vars=env)

    def locks(self, label: str) -> Path:
        return self.folder / f"locks-{label}"

    def running(self, label: str) -> bool:
        """A session holds the node's device lock (qbench.execute.lock)."""
        lock = self.locks(label) / "cpu.lock"
        if not lock.is_file():
            return False
        with open(lock) as file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(file, fcntl.LOCK_UN)
            return False

    def waiting(self, label: str) -> bool:
        """A gate-wait session on the node has started loading and waits for its release."""
        return any(self.gate.glob(f"{label}-*"))

    def replace(self, label: str) -> None:
        self.cluster.remove_node(self.nodes[label], allow_graceful=False)
        self.nodes[label] = self.add(label)
        self.cluster.wait_for_nodes()

    def session_processes(self) -> list[int]:
        """qbench worker processes started on this cluster's nodes (their environment names its lock folders)."""
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                command = (proc / "cmdline").read_bytes()
                environment = (proc / "environ").read_bytes()
            except OSError:
                continue
            if b"qbench.execute.worker" in command and str(self.folder).encode() in environment:
                found.append(int(proc.name))
        return found

    def no_session_left(self, within_s: float = 30.0) -> bool:
        deadline = time.monotonic() + within_s
        while self.session_processes() and time.monotonic() < deadline:
            time.sleep(0.2)
        return not self.session_processes()


GATE_WAIT = """
import os, time
from pathlib import Path
from qbench.backends.bf16 import Bf16Backend

class GateWait(Bf16Backend):
    name = "gate-wait"

    def load(self, spec, options):
        gate = Path(os.environ["QBENCH_TEST_GATE"])
        (gate / f"{os.environ['QBENCH_CPU_LABEL']}-{os.getpid()}").touch()
        deadline = time.monotonic() + 600  # the test releases it or interrupts the run long before
        while not (gate / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return super().load(spec, options)
"""


def install_gate_wait(site: Path) -> None:
    """The gate-wait plugin as an installed distribution in `site` (on the nodes' PYTHONPATH)."""
    (site / "qbench_gate_wait").mkdir(parents=True)
    (site / "qbench_gate_wait" / "__init__.py").write_text(GATE_WAIT)
    info = site / "qbench_gate_wait-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: qbench-gate-wait\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[qbench.backends]\ngate-wait = qbench_gate_wait:GateWait\n")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pytest.importorskip("ray")
    cluster = TwoTypes(tmp_path_factory.mktemp("ray"))
    yield cluster
    cluster.cluster.shutdown()


def when(condition, then, timeout_s: float = 120.0) -> threading.Thread:
    """Call `then` from a thread as soon as `condition` holds."""

    def watch():
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                then()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def stored(db="r.sqlite") -> list[dict]:
    store = Store(db, readonly=True)
    sessions = store.sessions()
    store.close()
    return sessions


def test_a_sweep_over_two_types_runs_each_on_its_own_node(cluster):
    result = invoke("compare", "--executor", "ray", "--address", cluster.cluster.address, "--gpu", "cpu-a,cpu-b", *FAST)
    assert result.exit_code == 0, result.output
    assert "cpu-a -> qbench-gpu:cpu-a on 1 node(s)" in result.output
    sessions = stored()
    assert sorted(s["gpu"] for s in sessions) == ["cpu-a", "cpu-b"]
    for session in sessions:
        label = session["gpu"].removeprefix("cpu-")
        assert session["result"]["status"] == "ok", session["result"]["reason"]
        node = session["result"]["node"]
        assert node["ray_node_id"] == cluster.nodes[label].node_id and node["host"] == socket.gethostname()
        assert session["result"]["provenance"]["device"] == session["gpu"]  # the node's own device said so
    # one cell per type: the two never pool into one row
    assert len({s["cell_hash"] for s in sessions}) == 2


def test_a_lost_node_costs_its_sessions_and_resume_runs_them(cluster, monkeypatch):
    monkeypatch.setattr("qbench.execute.ray.GONE_GRACE_S", 2.0)
    command = ["compare", "--executor", "ray", "--address", cluster.cluster.address, "--gpu", "cpu-a,cpu-b"]
    command += [*FAST, "--sessions", "2"]
    # node b is killed while its first session runs; its second one then has nowhere to run
    killer = when(lambda: cluster.running("b"), lambda: cluster.cluster.remove_node(cluster.nodes["b"], False))
    first = invoke(*command)
    killer.join()
    assert first.exit_code == 0, first.output  # cpu-a's sessions succeeded
    by_gpu = {gpu: [s["result"] for s in stored() if s["gpu"] == gpu] for gpu in ("cpu-a", "cpu-b")}
    assert [r["status"] for r in by_gpu["cpu-a"]] == ["ok", "ok"]
    (lost,) = by_gpu["cpu-b"]
    assert lost["status"] == "crashed" and "lost with its Ray node or worker" in lost["reason"]
    assert "not run: no node offers qbench-gpu:cpu-b any more" in first.output
    assert cluster.no_session_left()  # the lost session's worker went with its node

    cluster.nodes["b"] = cluster.add("b")  # a new cpu-b node; --resume runs what is missing there only
    cluster.cluster.wait_for_nodes()
    second = invoke(*command, "--resume", "--format", "json")
    assert second.exit_code == 0, second.output
    assert second.output.count("already stored, skipped (--resume)") == 2  # cpu-a's two
    rows = {row["gpu"]: row for row in json.loads(second.stdout)}
    assert rows["cpu-a"]["sessions"] == rows["cpu-b"]["sessions"] == "2/2"
    new = [s for s in stored() if s["gpu"] == "cpu-b" and s["result"]["status"] == "ok"]
    assert {s["result"]["node"]["ray_node_id"] for s in new} == {cluster.nodes["b"].node_id}


def test_ctrl_c_cancels_every_task_and_leaves_nothing_running(cluster, monkeypatch):
    monkeypatch.syspath_prepend(str(cluster.site))  # the driver plans gate-wait too
    # a user's Ctrl-C reaches a fresh qbench process, whose SIGINT handler is Python's default; an
    # earlier test in this process may have left another (interrupt_main then does nothing)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    command = ["compare", "--executor", "ray", "--address", cluster.cluster.address, "--gpu", "cpu-a,cpu-b"]
    ended = threading.Event()

    def ctrl_c():
        _thread.interrupt_main()
        # the run stops within seconds of a Ctrl-C; if it has not after a minute, the sessions are let go,
        # so the test fails in minutes with the run's output rather than after every session's timeout
        if not ended.wait(60):
            (cluster.gate / "release").touch()

    # Ctrl-C once a session waits on each node: both are held until it comes, however busy the machine
    interrupt = when(lambda: cluster.waiting("a") and cluster.waiting("b"), ctrl_c, timeout_s=300)
    gated = ["gate-wait" if arg == "bf16" else arg for arg in FAST]
    try:
        result = invoke(*command, *gated, "--sessions", "3", "--timeout", "300")
    finally:
        ended.set()
        signal.signal(signal.SIGINT, previous)
    interrupt.join()
    assert not (cluster.gate / "release").exists(), "the Ctrl-C did not stop the run:\n" + result.output
    assert result.exit_code == 130, result.output
    assert "interrupted by SIGINT" in result.output and "resume with" in result.output
    assert cluster.no_session_left()
    assert not cluster.running("a") and not cluster.running("b")  # both locks released
    assert all(s["result"]["status"] == "ok" for s in stored())  # an interrupted session is discarded


class FinishedProbes:
    """The Ray calls probe_types makes, where the tasks in `finished` have returned and the others
    still run; it records what is cancelled."""

    class exceptions:
        GetTimeoutError = TimeoutError
        RayError = RuntimeError

    def __init__(self, answers: dict, finished: set):
        self.answers, self.finished, self.cancelled = answers, finished, []

    def remote(self, function):
        assert function is probe_on_node

        def options(resources, **_):
            (resource,) = resources
            return SimpleNamespace(remote=lambda: resource)  # the task's ref is its resource

        return SimpleNamespace(options=options)

    def get(self, ref, timeout):
        assert ref in self.finished, "a test's running probe would block here"
        return self.answers[ref]

    def wait(self, refs, num_returns, timeout, fetch_local=True):
        return [r for r in refs if r in self.finished], [r for r in refs if r not in self.finished]

    def cancel(self, ref, force=False):
        self.cancelled.append(ref)


def test_a_probe_that_answered_is_never_cancelled(monkeypatch):
    """A refused probe's run cancels the probes still running, never one that answered: in Ray a
    cancel that meets the task's completion aborts the driver (exit 1; once in CI)."""
    monkeypatch.setenv("QBENCH_CPU_LABEL", "a")
    node = {"host": "n1", "qbench": "0"}
    offered = {"qbench-gpu:cpu-c": 1, "qbench-gpu:cpu-b": 1}
    placements = {name: placement_for(load_gpu_spec(name), offered) for name in ("cpu-c", "cpu-b")}
    ray = FinishedProbes({"qbench-gpu:cpu-c": {"device": probe_device(), "node": node}}, {"qbench-gpu:cpu-c"})
    with pytest.raises(UserError, match="whose device is cpu-a"):
        probe_types(ray, placements, print)
    assert ray.cancelled == ["qbench-gpu:cpu-b"]  # the liar's probe had answered; cpu-b's still ran


def test_a_node_whose_device_is_not_its_label_is_refused(cluster):
    """A node advertising qbench-gpu:cpu-c whose own device is cpu-a measures nothing."""
    liar = cluster.cluster.add_node(num_cpus=1, resources={"qbench-gpu:cpu-c": 1}, env_vars={"QBENCH_CPU_LABEL": "a"})
    try:
        result = invoke("compare", "--executor", "ray", "--address", cluster.cluster.address, "--gpu", "cpu-c", *FAST)
    finally:
        cluster.cluster.remove_node(liar)
    assert result.exit_code == 2, result.output
    assert "whose device is cpu-a;" in result.output and "qbench-gpu:cpu-a" in result.output
    assert not Path("r.sqlite").exists()


def test_a_type_no_node_offers_is_one_line(cluster):
    result = invoke("compare", "--executor", "ray", "--address", cluster.cluster.address, "--gpu", "l4", *FAST)
    assert result.exit_code == 2, result.output
    assert "no node of the Ray cluster offers qbench-gpu:l4 or accelerator_type:L4" in result.output
    assert "Traceback" not in result.output and not Path("r.sqlite").exists()


def test_an_unreachable_address_is_one_line():
    pytest.importorskip("ray")
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    result = invoke("compare", "--executor", "ray", "--address", f"127.0.0.1:{port}", "--gpu", "cpu-a", *FAST)
    assert result.exit_code == 2, result.output
    assert "cannot reach the Ray head" in result.output and len(result.output.strip().splitlines()) == 1


def test_without_ray_the_executor_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = invoke("compare", "--executor", "ray", "--gpu", "l4", *FAST)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "qbench: error: missing package ray: pip install 'qbench-decode[ray]'"


def test_the_local_executor_takes_one_gpu_and_no_address():
    several = invoke("compare", "--gpu", "l4,h100-sxm5", *FAST)
    assert several.exit_code == 2 and "sweep several GPU types with --executor ray" in several.output
    address = invoke("compare", "--address", "10.0.0.1:6379", *FAST)
    assert address.exit_code == 2 and "add --executor ray" in address.output
    assert not Path("r.sqlite").exists()


def test_a_cpu_label_names_a_cpu_and_never_a_gpu(monkeypatch):
    from qbench.errors import UserError
    from qbench.specs import cpu_device_name, gpu_for_device, load_gpu_spec

    monkeypatch.setenv("QBENCH_CPU_LABEL", "a")
    assert cpu_device_name() == "cpu-a"
    spec = gpu_for_device("cpu-a")
    assert spec.name == "cpu-a" and spec.peak_bandwidth_gbps is None and spec == load_gpu_spec("cpu-a")
    monkeypatch.setenv("QBENCH_CPU_LABEL", "NVIDIA L4")  # not a label: refused, never matched to the L4
    with pytest.raises(UserError, match="QBENCH_CPU_LABEL must be"):
        cpu_device_name()
