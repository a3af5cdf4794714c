"""A fresh process per session, so a crash, hang or out-of-memory costs one session and no more.

Two ways to start that process, with the same contract (`run_worker` / `Forkserver.run`: a config
in, one result dict out, never an exception for what happens inside the child):

  spawn       python -m qbench.execute.worker CONFIG.json RESULT.json: a new interpreter that imports
              torch, transformers and the model's code itself (seconds on every session).
  forkserver  one process per run imports all of that once, touching no CUDA, and forks a child per
              session (`python -m qbench.execute.worker --serve`). Each child is a new process with its own
              CUDA context, allocator and model, as a spawned one; it only skips the imports.
              `qbench compare` uses it; QBENCH_FORKSERVER=0 spawns instead.

Nothing is left running. If the parent is interrupted (Ctrl-C, SIGTERM) it kills the child's whole
process group (compilers it started included) and removes the scratch folder before the interrupt
goes on. If the parent dies without a chance to do so (SIGKILL), the kernel sends the child (and the
forkserver) SIGTERM (PR_SET_PDEATHSIG); the child removes its scratch folder and kills its group. A
scratch folder whose owner is gone all the same is removed by the next run (`remove_stale_scratch`).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qbench.errors import UserError
from qbench.records import SessionConfig, SessionResult
from qbench.scratch import OWNER_FILE, PROGRESS_MARK, SCRATCH_PREFIX, progress  # noqa: F401 (re-exported)

POLL_S = 0.2
SERVER_START_S = 300.0  # the forkserver's imports, on a cold disk


def failed(status: str, reason: str) -> dict[str, Any]:
    return {"status": status, "reason": reason, "blocks": []}


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


class _Spawned:
    """A child started as a new interpreter: `python -m qbench.execute.worker CONFIG RESULT`."""

    how = "spawn"

    def __init__(self, config_path: Path, result_path: Path, log, scratch: str, env: dict):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "qbench.execute.worker", str(config_path), str(result_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killing it kills compilers it spawned too
            env=env,
            cwd=scratch,  # never import a source checkout from the caller's directory by accident
        )
        self.pid = self.process.pid

    def wait(self, seconds: float) -> int | None:
        try:
            return self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


def _run(start: Callable[..., Any], config_json: str, timeout_s: float, log_path, env, on_progress) -> dict:
    """The parent's side of one session, whichever way the child starts."""
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX) as scratch:
        (Path(scratch) / OWNER_FILE).write_text(str(os.getpid()))
        config_path = Path(scratch) / "config.json"
        result_path = Path(scratch) / "result.json"
        log_path = log_path or Path(scratch) / "worker.log"
        config_path.write_text(config_json)
        child_env = dict(os.environ if env is None else env, QBENCH_PARENT_PID=str(os.getpid()))
        child_env["QBENCH_SPAWNED_AT"] = repr(time.time())
        began = time.perf_counter()
        with open(log_path, "w") as log:
            child = start(config_path, result_path, log, scratch, child_env)
            relay = _LogRelay(log_path, on_progress)
            deadline = time.monotonic() + timeout_s
            try:
                while (code := child.wait(POLL_S)) is None:
                    relay.poll()
                    if time.monotonic() > deadline:
                        child.kill()
                        return failed("timeout", f"no result after {timeout_s:g} s (--timeout); killed")
                relay.poll()
            except BaseException:
                child.kill()
                raise
        if result_path.exists():
            result = json.loads(result_path.read_text())
            result["worker_start"] = child.how
            return _with_total(result, time.perf_counter() - began)
        if getattr(child, "lost", ""):
            return failed("crashed", f"{child.lost}; last output: {_tail(log_path)}")
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (likely out of host memory)" if name == "SIGKILL" else ""
            return failed("crashed", f"worker killed by {name}{hint}; last output: {_tail(log_path)}")
        return failed("crashed", f"worker exited with code {code} and no result; last output: {_tail(log_path)}")


def _config_json(config: SessionConfig | str) -> str:
    return config.to_json() if isinstance(config, SessionConfig) else config


def run_worker(
    config: SessionConfig | str,
    timeout_s: float,
    log_path: Path | None = None,
    env: dict | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> SessionResult:
    """Run one session (its SessionConfig, or that as JSON) in a newly spawned interpreter (see the
    module's docstring); what it gives, or why it gave nothing, is its SessionResult.

    An interrupt of the parent (KeyboardInterrupt, or any exception while waiting) kills the
    child's process group and removes the scratch folder, then propagates."""
    return SessionResult.from_worker(_run(_Spawned, _config_json(config), timeout_s, log_path, env, on_progress))


class ForkFailed(RuntimeError):
    """The forkserver could not start a session's process (it died, or did not answer)."""


class Forkserver:
    """A preloaded process that forks one child per session (see the module's docstring)."""

    def __init__(self, model_types: list[str], backends: list[str], compiler: bool = False):
        env = dict(os.environ, QBENCH_PARENT_PID=str(os.getpid()))
        # torch.cuda.is_available() through NVML, not cuInit: a CUDA-initialised parent cannot fork
        # children that use CUDA, so the server must never initialise it.
        env["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
        self.errors = tempfile.TemporaryFile("w+")  # the server's own stderr, read back if it fails
        self.process = subprocess.Popen(
            [sys.executable, "-m", "qbench.execute.worker", "--serve", ",".join(model_types), ",".join(backends),
             "compiler" if compiler else ""],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errors,
            start_new_session=True,
            env=env,
            cwd=tempfile.gettempdir(),
        )
        self.pending = b""
        try:
            reply = self._reply(SERVER_START_S)
        except BaseException:  # interrupted while it starts: it goes too
            self.kill()
            raise
        if not reply or not reply.get("ready"):
            self.close()
            self.errors.seek(0)
            lines = [line for line in self.errors.read().splitlines() if line.strip()]
            why = (reply or {}).get("error") or (lines[-1] if lines else "no answer")
            raise RuntimeError(f"forkserver did not start: {why}")
        self.preload_s = reply.get("preload_s")
        self.preloaded = reply.get("preloaded", [])
        self.notes = reply.get("notes", [])

    def _reply(self, seconds: float) -> dict | None:
        """The server's next line (JSON), or None if none came within `seconds` or it ended. Reads
        the pipe unbuffered: a buffered reader could hold a line that select() then never reports."""
        deadline = time.monotonic() + seconds
        descriptor = self.process.stdout.fileno()
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([descriptor], [], [], left)[0]:
                return None
            chunk = os.read(descriptor, 65536)
            if not chunk:
                return None
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def alive(self) -> bool:
        return self.process.poll() is None

    def run(
        self, config: SessionConfig | str, timeout_s: float, on_progress: Callable[[str], None] | None = None
    ) -> SessionResult:
        """One session in a child forked from this server; as run_worker otherwise."""
        server = self
        config_json = _config_json(config)

        class Forked:
            how = "fork"

            def __init__(self, config_path, result_path, log, scratch, env):
                request = {"config": str(config_path), "result": str(result_path), "log": log.name, "cwd": scratch}
                request["env"] = {k: env[k] for k in ("QBENCH_SPAWNED_AT",)}
                try:
                    server.process.stdin.write((json.dumps(request) + "\n").encode())
                    server.process.stdin.flush()
                except OSError as error:
                    raise ForkFailed(f"forkserver gone: {error}") from None
                reply = server._reply(60)
                if not reply or "pid" not in reply:
                    raise ForkFailed(f"forkserver did not fork: {reply}")
                self.pid, self.code = reply["pid"], None

            def wait(self, seconds: float) -> int | None:
                if self.code is None:
                    reply = server._reply(seconds)
                    if reply is not None:
                        self.code = reply["code"]
                    elif not server.alive():
                        self.code = -signal.SIGKILL
                        self.lost = "the forkserver that forked this session died, and the session with it"
                return self.code

            def kill(self) -> None:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                while self.wait(5.0) is None and server.alive():
                    pass

        try:
            return SessionResult.from_worker(_run(Forked, config_json, timeout_s, None, None, on_progress))
        except ForkFailed as error:  # this session, and the rest, start as new interpreters
            self.close()
            if on_progress:
                on_progress(f"note: {error}; starting a new interpreter instead")
            return run_worker(config_json, timeout_s, on_progress=on_progress)

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()

    def kill(self) -> None:
        """The server's whole process group, now."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


def _with_total(result: dict, total_s: float) -> dict:
    """The session's whole wall time as the parent saw it, and what no phase accounts for."""
    phases = result.setdefault("phases", {})
    phases["total_s"] = round(total_s, 3)
    phases["rest_s"] = round(total_s - sum(v for k, v in phases.items() if k != "total_s"), 3)
    return result


def _set_pdeathsig() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass


def _die_with_parent(scratch: Path) -> None:
    """Child side: if the parent dies, remove the scratch folder and kill this process group."""

    def on_term(signum, frame):  # the parent died (PR_SET_PDEATHSIG) or someone asked us to stop
        shutil.rmtree(scratch, ignore_errors=True)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    signal.signal(signal.SIGTERM, on_term)
    _set_pdeathsig()
    parent = os.environ.get("QBENCH_PARENT_PID")
    if parent and os.getppid() != int(parent):  # the parent died before prctl took effect
        on_term(signal.SIGTERM, None)


def _child(config_path: str, result_path: str) -> None:
    entered = time.time()
    _die_with_parent(Path(config_path).parent)
    from qbench.session.run import run_session

    imported = time.time()
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
    except BaseException as error:  # SystemExit, KeyboardInterrupt: a backend's (no terminal signal reaches us)
        traceback.print_exc()
        result = failed("failed", f"{error!r} raised in {_raised_where(error)}"[:500])
    spawned = float(os.environ.get("QBENCH_SPAWNED_AT", entered))
    phases = result.setdefault("phases", {})
    phases.update(start_s=round(entered - spawned, 3), imports_s=round(imported - entered, 3))
    Path(result_path).write_text(json.dumps(result))


def _raised_where(error: BaseException) -> str:
    """The first function outside qbench's core that the error came through, e.g. `load()
    (mypkg/backend.py:12)`: the backend's call the session made."""
    core = Path(__file__).resolve().parents[1]  # the qbench package; its built-in backends count as plugins
    plugins = core / "backends"

    def in_core(filename: str) -> bool:
        parents = Path(filename).resolve().parents
        return core in parents and plugins not in parents

    frames = traceback.extract_tb(error.__traceback__)
    outside = [f for f in frames if not in_core(f.filename)] or frames[-1:]
    if not outside:
        return "the session"
    frame = outside[0]
    return f"{frame.name}() ({'/'.join(Path(frame.filename).parts[-2:])}:{frame.lineno})"


def _exit_now(code: int = 0) -> None:
    """Leave without the interpreter's teardown (a second or more with torch loaded): the result is
    written and nothing else is owed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _preload(model_types: list[str], backends: list[str], compiler: bool = False) -> tuple[list[str], list[str]]:
    """What every session imports, imported once: torch, transformers and each model's code,
    qbench's session modules and each planned backend's class; with `compiler`, torch.compile's
    modules (torch._dynamo, inductor), which lean's compiled step and bitsandbytes' import need in
    every session (1.5-4.6 s of imports each otherwise). The backends' packages are left to
    each child: on the H100 host bitsandbytes, imported where CUDA may not be initialised, settles
    on its CPU-only library; gptqmodel starts threads (a fork copies only the calling thread) and,
    through torchao, initialises CUDA.

    A step whose import would initialise CUDA (which would keep every forked child from using it)
    is stopped by a tripwire in torch's CUDA initialisation and left to the children; the notes
    say which step and from where. An import that swallows the tripwire's error and carries on
    without CUDA would leave a wrong module in every child: the server then refuses to serve (the
    run spawns its sessions). Returns (what was preloaded, notes). Environment variables an import
    sets are put back, so every session runs with the environment it was given."""
    import traceback

    import torch
    import torch.profiler  # noqa: F401

    preloaded: list[str] = []
    notes: list[str] = []
    culprit: list[str] = []

    def tripwire(*args, **kwargs):
        frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename]
        culprit[:] = [f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"]
        raise RuntimeError("CUDA initialisation during preload")

    def model_code(model_type: str) -> None:
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.for_model(model_type))]  # imports the modeling module

    def qbench_modules() -> None:
        import qbench.session.quality  # noqa: F401
        import qbench.session.run  # noqa: F401

    def backend_module(name: str) -> None:
        from qbench.registry import load_backend

        try:
            load_backend(name)
        except UserError:
            if culprit:
                raise
            # otherwise the session says why it cannot load

    steps = [("transformers", lambda: __import__("transformers").StaticCache), ("qbench", qbench_modules)]
    if compiler:
        steps.append(("torch.compile's modules", lambda: __import__("torch._inductor.compile_fx")))
    steps += [(f"{model_type} model code", lambda t=model_type: model_code(t)) for model_type in model_types]
    steps += [(f"backend {name}", lambda n=name: backend_module(n)) for name in backends]
    environment = dict(os.environ)
    original_init = torch.cuda._lazy_init
    torch.cuda._lazy_init = tripwire
    try:
        for what, step in steps:
            try:
                step()
            except Exception as error:  # left for each child to import, as a spawned worker would
                where = f" (CUDA initialised from {culprit[0]})" if culprit else ""
                notes.append(
                    f"{what} not preloaded: {type(error).__name__}: {str(error)[:120]}{where}; "
                    "each session imports it itself"
                )
                culprit.clear()
                continue
            if culprit:  # the import caught the tripwire's error and went on without CUDA: its state is wrong
                raise RuntimeError(f"{what} asked for CUDA at {culprit[0]} and carried on without it")
            preloaded.append(what)
    finally:
        torch.cuda._lazy_init = original_init
        changed = sorted(k for k in set(os.environ) | set(environment) if os.environ.get(k) != environment.get(k))
        for name in changed:
            if name in environment:
                os.environ[name] = environment[name]
            else:
                del os.environ[name]
        changed = [name for name in changed if not name.startswith("TORCHINDUCTOR_")]  # torch's own defaults
        if changed:
            notes.append(f"put back the environment variables set by preloaded imports: {', '.join(changed)}")
    return preloaded, notes


def _serve(model_types: list[str], backends: list[str], compiler: bool = False) -> None:
    """The forkserver: preload, then fork one child per request read from stdin, one at a time."""
    _set_pdeathsig()
    current: list[int] = []

    def on_term(signum, frame):  # the parent died, or asks us to stop: take the running child along
        for pid in current:
            try:
                os.kill(pid, signal.SIGTERM)  # the child removes its scratch folder and kills its group
            except ProcessLookupError:
                pass
        _exit_now(0)

    signal.signal(signal.SIGTERM, on_term)
    # The replies travel on a copy of stdout; stdout itself becomes stderr, so that whatever a
    # preloaded package prints (gptqmodel prints a banner) cannot corrupt them.
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    began = time.perf_counter()
    try:
        preloaded, notes = _preload(model_types, backends, compiler)
        import torch

        if torch.cuda.is_initialized():
            raise RuntimeError("CUDA was initialised while preloading; children could not use it")
        threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        if threads:  # a fork copies only this thread: a lock another one holds would never be released
            raise RuntimeError(f"a preloaded import started threads ({', '.join(threads[:3])}); forking could deadlock")
    except Exception as error:
        out.write(json.dumps({"ready": False, "error": f"{type(error).__name__}: {error}"[:300]}) + "\n")
        out.flush()
        return
    ready = {"ready": True, "preload_s": round(time.perf_counter() - began, 3), "preloaded": preloaded, "notes": notes}
    out.write(json.dumps(ready) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the session's process
            out.close()  # the replies are the server's: a live child must not hold the pipe open
            os.setsid()
            os.chdir(request["cwd"])
            os.environ.update(request["env"], QBENCH_PARENT_PID=str(os.getppid()))
            log = os.open(request["log"], os.O_WRONLY | os.O_APPEND)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                _child(request["config"], request["result"])
            finally:
                _exit_now(0)
        current[:] = [pid]
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        current.clear()
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        out.write(json.dumps({"code": code}) + "\n")
        out.flush()


if __name__ == "__main__":
    import qbench.plugins

    qbench.plugins.probe_plugins = False  # the run probed them; a broken one costs this process only
    if sys.argv[1] == "--serve":
        compiler = len(sys.argv) > 4 and sys.argv[4] == "compiler"
        _serve([t for t in sys.argv[2].split(",") if t], [b for b in sys.argv[3].split(",") if b], compiler)
    else:
        _child(sys.argv[1], sys.argv[2])
        _exit_now(0)
