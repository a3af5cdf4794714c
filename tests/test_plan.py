"""Planning resolves the model spec and the backends once; the executors take what they need from
the plan and hand each worker a SessionConfig."""

import pytest

from qbench.backend import DeviceInfo
from qbench.compare import CompareConfig, plan, session_jobs, start_forkserver
from qbench.records import SessionConfig

CPU = DeviceInfo("cpu", "cpu")
TINY = CompareConfig(model="tiny", backends=("bf16",), runtimes=("hf", "lean"), ctx=(16,), sessions=2, steps=2)


def test_the_forkserver_preloads_what_the_plan_resolved(monkeypatch):
    the_plan = plan(TINY, CPU)
    made = []

    class FakeServer:
        preloaded, preload_s, notes = ["llama"], 0.0, []

        def __init__(self, model_types, backends, compiler):
            made.append((model_types, backends, compiler))

    def no_spec(*args, **kwargs):
        raise AssertionError("the spec was loaded again after planning")

    here = start_forkserver.__globals__  # the module that starts it, whichever that is
    monkeypatch.setitem(here, "Forkserver", FakeServer)
    monkeypatch.setitem(here, "load_model_spec", no_spec)
    monkeypatch.setattr("qbench.specs.load_model_spec", no_spec)
    monkeypatch.setenv("QBENCH_FORKSERVER", "1")
    assert start_forkserver(the_plan, lambda line: None) is not None
    assert made == [(["llama"], ["bf16"], False)]


def test_the_jobs_are_session_configs_keyed_as_stored():
    jobs = session_jobs(plan(TINY, CPU))
    assert len(jobs) == 4 and all(isinstance(session, SessionConfig) for session, _ in jobs)
    assert [(s.runtime, s.session_index) for s, _ in jobs] == [("hf", 0), ("lean", 0), ("hf", 1), ("lean", 1)]
    for session, cell in jobs:
        assert cell == SessionConfig.from_json(session.to_json()).cell_key("cpu")


def test_a_worker_result_that_does_not_read_is_a_failed_session():
    from qbench.execute.progress import as_result

    result = as_result({"status": "ok", "blocks": [], "surprise": 1})
    assert result.status == "failed" and "unknown key(s) surprise" in result.reason


@pytest.mark.parametrize("name", ["local", "ray"])
def test_each_executor_has_the_one_run(name):
    import importlib
    import inspect

    module = importlib.import_module(f"qbench.execute.{name}")
    executor = {"local": "LocalExecutor", "ray": "RayExecutor"}[name]
    assert list(inspect.signature(getattr(module, executor).run).parameters) == ["self", "plans", "progress"]
