"""A sweep killed part-way and re-run with --resume ends with every cell once: none lost, none doubled."""

import pytest

from qbench.backend import DeviceInfo
from qbench.compare import CompareConfig, plan, run_compare
from qbench.store import Store


class Killed(Exception):
    pass


def test_resume_after_a_killed_sweep(tmp_path):
    config = CompareConfig(
        model="tiny",
        backends=("bf16", "torch-int4"),
        ctx=(16, 32),
        sessions=2,
        warmup=1,
        steps=2,
        db=str(tmp_path / "r.sqlite"),
        resume=True,
    )
    the_plan = plan(config, DeviceInfo("cpu", "cpu"))
    done = []

    def kill_after_three(line):  # after the third session's own line (not its phase lines, indented)
        if line.startswith("[") and " session " in line:
            done.append(line)
        if len(done) == 3:
            raise Killed

    with pytest.raises(Killed):
        run_compare(the_plan, "first", progress=kill_after_three)
    store = Store(config.db)
    assert len(store.sessions()) == 3
    store.close()

    lines = []
    second = run_compare(the_plan, "second", progress=lines.append)
    assert sum("already stored" in line for line in lines) == 3
    assert (second.measured, second.reused) == (5, 3)
    store = Store(config.db)
    sessions = store.sessions()
    keys = [(s["cell_hash"], s["config"]["session_index"]) for s in sessions]
    assert len(keys) == len(set(keys)) == 2 * 2 * 2  # backends x ctx x sessions, each exactly once
    # The resumed run counts the whole plan: its 5 new sessions and the 3 it found stored.
    resumed = store.sessions(run_ids=[second.run_id])
    assert sorted(s["id"] for s in resumed) == sorted(second.session_ids) == sorted(s["id"] for s in sessions)
    store.close()

    third = run_compare(the_plan, "third", progress=lines.append)  # everything stored: no empty run
    store = Store(config.db)
    assert third.run_id is None and third.reused == 8 and len(store.run_ids()) == 2
    store.close()


def test_sessions_default_to_ten_where_graphs_are_ab_tested():
    h100 = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", (9, 0))
    cpu = DeviceInfo("cpu", "cpu")
    auto = CompareConfig(model="tiny", backends=("bf16",))
    assert plan(auto, h100).sessions == 10  # graphs auto = both on a GPU: an A/B claim
    assert plan(auto, cpu).sessions == 1  # graphs off: nothing to A/B
    assert plan(CompareConfig(model="tiny", backends=("bf16",), graphs="on"), h100).sessions == 1
    assert plan(CompareConfig(model="tiny", backends=("bf16",), sessions=3), h100).sessions == 3
