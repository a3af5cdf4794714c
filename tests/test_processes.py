"""Nothing left running, nothing timed over anything else: interrupts kill the worker and its scratch
folder, a dead parent takes its worker with it, and two runs on one device take turns."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qbench.execute.worker import OWNER_FILE, remove_stale_scratch
from qbench.store import Store

FAST = ["--model", "tiny", "--ctx", "16", "--warmup", "1", "--steps", "3"]


def qbench(args, tmp_path, **popen):
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"), QBENCH_LOCK_DIR=str(tmp_path / "locks"))
    (tmp_path / "tmp").mkdir(exist_ok=True)
    command = [sys.executable, "-m", "qbench.cli", *args]
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell ignores SIGINT in commands it runs in the background (CI may run these tests so), and
        # Python then installs no Ctrl-C handler: give the CLI the default, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **popen,
    )


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (the forkserver and the session it forked, or the spawned worker)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        below = [child for child, parent in parents.items() if parent in frontier]
        found += below
        frontier = below
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def running_session(cli: subprocess.Popen, tmp_path: Path, processes: int) -> list[int]:
    """The processes below the CLI once its session is under way (its scratch folder exists): the
    spawned worker, or the forkserver and the session it forked."""
    found = []

    def started():
        found[:] = descendants(cli.pid)
        return len(found) >= processes and bool(list((tmp_path / "tmp").glob("qbench-*/worker.log")))

    assert wait_for(started), f"the session never started: {found}"
    time.sleep(1.0)  # into the session's load (the fake backend sleeps there)
    return descendants(cli.pid)


# One session: the worker is spawned; two: the forkserver forks it.
STARTS = {"spawned": ["--sessions", "1"], "forked": ["--sessions", "2"]}
PROCESSES = {"spawned": 1, "forked": 2}


@pytest.mark.parametrize("start", STARTS)
@pytest.mark.parametrize("sent, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_kills_the_worker_keeps_the_store_and_says_how_to_resume(
    plugin_dist, tmp_path, sent, exit_code, start
):
    db = tmp_path / "r.sqlite"
    cli = qbench(["compare", *FAST, *STARTS[start], "--backends", "fake-hang", "--db", str(db)], tmp_path)
    below = running_session(cli, tmp_path, PROCESSES[start])
    cli.send_signal(sent)  # what Ctrl-C delivers to the foreground process (the worker has its own session)
    _, stderr = cli.communicate(timeout=60)
    assert cli.returncode == exit_code, stderr
    assert f"interrupted by {signal.Signals(sent).name}" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr
    assert wait_for(lambda: not any(alive(pid) for pid in below), timeout=15), "a worker outlived the interrupt"
    assert list((tmp_path / "tmp").glob("qbench-*")) == []  # its scratch folder is gone too


@pytest.mark.parametrize("start", STARTS)
def test_a_killed_parent_takes_its_worker_and_scratch_with_it(plugin_dist, tmp_path, start):
    args = ["compare", *FAST, *STARTS[start], "--backends", "fake-hang", "--db", str(tmp_path / "r.sqlite")]
    cli = qbench(args, tmp_path)
    below = running_session(cli, tmp_path, PROCESSES[start])
    cli.kill()  # SIGKILL: the parent can clean nothing up itself
    cli.communicate(timeout=30)
    assert wait_for(lambda: not any(alive(pid) for pid in below), timeout=15), "a worker ran on as an orphan"
    assert wait_for(lambda: not list((tmp_path / "tmp").glob("qbench-*")), timeout=15)


def test_stale_scratch_of_dead_processes_is_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan, mine, foreign = tmp_path / "qbench-orphan", tmp_path / "qbench-mine", tmp_path / "qbench-foreign"
    for folder, owner in ((orphan, dead.pid), (mine, os.getpid())):
        folder.mkdir()
        (folder / OWNER_FILE).write_text(str(owner))
    foreign.mkdir()  # no owner file: not ours to judge
    remove_stale_scratch()
    assert not orphan.exists() and mine.exists() and foreign.exists()


def test_two_runs_on_one_device_take_turns(tmp_path):
    args = [*FAST, "--backends", "bf16", "--sessions", "2"]
    first = qbench(["compare", *args, "--db", str(tmp_path / "a.sqlite")], tmp_path)
    second = qbench(["compare", *args, "--db", str(tmp_path / "b.sqlite")], tmp_path)
    outputs = [run.communicate(timeout=600) for run in (first, second)]
    assert first.returncode == second.returncode == 0, outputs
    assert any("waiting for cpu: in use by qbench pid" in stderr for _, stderr in outputs)
    blocks = []
    for name in ("a", "b"):
        store = Store(tmp_path / f"{name}.sqlite", readonly=True)
        for session in store.sessions():
            assert session["result"]["status"] == "ok"
            blocks += [(b["started_unix"], b["ended_unix"], name) for b in session["result"]["blocks"]]
        store.close()
    blocks.sort()
    assert len(blocks) == 4
    for (_, end, _), (start, _, _) in zip(blocks, blocks[1:], strict=False):
        assert end <= start, f"timed blocks overlapped: {blocks}"


def test_first_run_kernel_preparation_is_shown_while_it_runs(plugin_dist, tmp_path):
    cli = qbench(["compare", *FAST, "--backends", "fake-slow-kernel", "--db", str(tmp_path / "r.sqlite")], tmp_path)
    _, stderr = cli.communicate(timeout=300)
    assert cli.returncode == 0, stderr
    lines = stderr.splitlines()
    preparing = next(i for i, line in enumerate(lines) if "fake-slow-kernel: preparing its CUDA kernel" in line)
    finished = next(i for i, line in enumerate(lines) if "session 1/1: ok" in line)
    assert preparing < finished  # said while the session ran, not after the fact
    assert any("preparing its CUDA kernel (a first run builds it): done in" in line for line in lines)


def test_the_forkserver_keeps_cuda_out_of_its_preload(tmp_path, monkeypatch):
    """A backend module that initialises CUDA at import would keep every forked session from using
    it: the forkserver's tripwire stops that import, says where it came from, and serves anyway."""
    from conftest import install_plugin

    source = """
        import torch
        from qbench.backends.bf16 import Bf16Backend
        try:
            torch.cuda._lazy_init()  # what a package that queries the GPU at import ends up calling
        except (AssertionError, RuntimeError) as error:  # on a CPU machine: no CUDA to initialise
            if "preload" in str(error):
                raise
        class Greedy(Bf16Backend):
            name = "greedy"
    """
    install_plugin(tmp_path / "site", monkeypatch, "qbench-greedy", "qbench_greedy", source, {"greedy": "Greedy"})
    cli = qbench(
        ["compare", *FAST, "--backends", "bf16,greedy", "--sessions", "2", "--db", str(tmp_path / "r.sqlite")],
        tmp_path,
    )
    _, stderr = cli.communicate(timeout=300)
    assert cli.returncode == 0, stderr
    assert "forkserver ready" in stderr
    note = next(line for line in stderr.splitlines() if "not preloaded" in line)
    assert "qbench_greedy/__init__.py" in note  # where CUDA would have been initialised
    store = Store(tmp_path / "r.sqlite", readonly=True)
    assert {s["result"]["worker_start"] for s in store.sessions()} == {"fork"}
    store.close()


def test_when_the_forkserver_dies_later_sessions_start_as_new_interpreters(plugin_dist, tmp_path):
    db = tmp_path / "r.sqlite"
    cli = qbench(["compare", *FAST, "--backends", "fake-parricide", "--sessions", "2", "--db", str(db)], tmp_path)
    _, stderr = cli.communicate(timeout=300)
    assert cli.returncode == 0, stderr  # one session succeeded
    store = Store(db, readonly=True)
    results = [s["result"] for s in store.sessions()]
    store.close()
    assert results[0]["status"] == "crashed" and "the forkserver" in results[0]["reason"]
    assert results[1]["status"] == "ok" and results[1]["worker_start"] == "spawn"


def test_the_forkserver_preload_cannot_corrupt_its_replies_or_the_environment(tmp_path, monkeypatch):
    """A backend module imported once by the forkserver prints on stdout and sets an environment
    variable at import: the server's replies travel apart from stdout, and the variable is put back,
    so the sessions run with the environment they were given."""
    from conftest import install_plugin

    source = """
        import os, sys
        print("A BANNER ON STDOUT", flush=True)
        if "--serve" in sys.argv:  # what a heavy package does where it is first imported: the server
            os.environ.setdefault("NOISY_ALLOC_CONF", "expandable")
        from qbench.backends.bf16 import Bf16Backend
        class Noisy(Bf16Backend):
            name = "noisy"
            def load(self, spec, options):  # forked: this module was imported by the server, not here
                if "NOISY_ALLOC_CONF" in os.environ:
                    raise RuntimeError("the preloaded module's environment leaked into the session")
                return super().load(spec, options)
    """
    install_plugin(tmp_path / "site", monkeypatch, "qbench-noisy", "qbench_noisy", source, {"noisy": "Noisy"})
    db = str(tmp_path / "r.sqlite")
    cli = qbench(["compare", *FAST, "--backends", "noisy", "--sessions", "2", "--db", db], tmp_path)
    _, stderr = cli.communicate(timeout=300)
    assert cli.returncode == 0, stderr
    assert "forkserver ready" in stderr and "backend noisy" in stderr  # preloaded, and the server served
    assert "put back the environment variables set by preloaded imports: NOISY_ALLOC_CONF" in stderr
    store = Store(tmp_path / "r.sqlite", readonly=True)
    results = [s["result"] for s in store.sessions()]
    store.close()
    assert [r["status"] for r in results] == ["ok", "ok"], [r["reason"] for r in results]
    assert {r["worker_start"] for r in results} == {"fork"}


def test_an_import_that_swallows_the_tripwire_stops_the_forkserver(tmp_path, monkeypatch):
    """bitsandbytes, imported without CUDA, catches the error and settles on its CPU library: a
    preloaded copy would be wrong in every child. Such an import makes the server refuse to serve,
    and every session starts a new interpreter."""
    from conftest import install_plugin

    source = """
        import torch
        try:
            torch.cuda._lazy_init()
            ON_GPU = True
        except Exception:  # swallowed: carries on as if there were no GPU
            ON_GPU = False
        from qbench.backends.bf16 import Bf16Backend
        class Degraded(Bf16Backend):
            name = "degraded"
    """
    install_plugin(tmp_path / "site", monkeypatch, "qbench-deg", "qbench_degraded", source, {"degraded": "Degraded"})
    db = str(tmp_path / "r.sqlite")
    # one session per backend: two sessions after the refusal, each a new interpreter
    cli = qbench(["compare", *FAST, "--backends", "bf16,degraded", "--sessions", "1", "--db", db], tmp_path)
    _, stderr = cli.communicate(timeout=300)
    assert cli.returncode == 0, stderr
    note = next(line for line in stderr.splitlines() if "forkserver did not start" in line)
    assert "backend degraded asked for CUDA" in note and "qbench_degraded/__init__.py" in note
    store = Store(tmp_path / "r.sqlite", readonly=True)
    results = [s["result"] for s in store.sessions()]
    store.close()
    assert len(results) == 2
    assert {r["status"] for r in results} == {"ok"} and {r["worker_start"] for r in results} == {"spawn"}


def test_the_forkserver_imports_torch_compile_once_where_sessions_need_it():
    """lean on CUDA compiles, and bitsandbytes imports torch._dynamo and inductor: the forkserver then
    imports them once (CUDA kept out, no thread started), not every session."""
    from types import SimpleNamespace

    from qbench.compare import needs_compiler

    def plan(kind, runtimes):
        return SimpleNamespace(device=SimpleNamespace(kind=kind), runtimes=runtimes, backends=list(runtimes))

    assert not needs_compiler(plan("cpu", {"bf16": ("hf", "lean"), "torch-int4": ("hf",)}))
    assert not needs_compiler(plan("cuda", {"bf16": ("hf",)}))
    assert needs_compiler(plan("cuda", {"bf16": ("hf", "lean")}))
    assert needs_compiler(plan("cpu", {"bnb-nf4": ("hf",)}))
    code = (
        "import sys, threading\n"
        "from qbench.execute.worker import _preload\n"
        "preloaded, notes = _preload(['llama'], ['bf16'], compiler=True)\n"
        "assert \"torch.compile's modules\" in preloaded, (preloaded, notes)\n"
        "assert 'torch._inductor.compile_fx' in sys.modules and threading.active_count() == 1\n"
        "preloaded, notes = _preload(['llama'], ['bf16'])\n"
        "assert \"torch.compile's modules\" not in preloaded\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
