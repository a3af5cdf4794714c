"""Intervals resample sessions and cover the truth at their stated rate; flags fire when they should."""

import numpy as np
import pytest

from qbench.analysis import stats
from qbench.report import aggregate, render


def _coverage(n_sessions: int, trials: int, paired: bool) -> float:
    """Sessions whose per-session ms is lognormal around a known ratio of 1.25 (graphs A/B)."""
    rng = np.random.default_rng(1234)
    truth, covered = 1.25, 0
    for _ in range(trials):
        graph = np.exp(rng.normal(np.log(10.0), 0.05, n_sessions))
        eager = graph * np.exp(rng.normal(np.log(truth), 0.02, n_sessions))
        interval = stats.ratio_interval(eager, graph, paired=paired)
        covered += interval.low <= truth <= interval.high
    return covered / trials


def test_t_interval_on_log_ratio_covers_95_percent_below_10_sessions():
    assert 0.93 <= _coverage(n_sessions=5, trials=2000, paired=True) <= 0.97


@pytest.mark.slow
def test_bca_bootstrap_covers_95_percent_at_30_sessions():
    assert 0.93 <= _coverage(n_sessions=30, trials=300, paired=True) <= 0.97


def test_the_vectorised_bootstrap_gives_the_interval_of_one_call_a_resample():
    """qbench's bootstrap hands scipy a statistic over an axis (all resamples at once); the interval is
    the one scipy gives calling the plain statistic once a resample, with the same seed, to the bit."""
    from scipy import stats as scipy_stats

    rng = np.random.default_rng(7)
    a, b = rng.lognormal(size=13), rng.lognormal(size=17)

    def one_at_a_time(samples, statistic):
        result = scipy_stats.bootstrap(samples, statistic, vectorized=False, confidence_level=stats.CONFIDENCE,
                                       method="BCa", n_resamples=2000, random_state=np.random.default_rng(0))
        return tuple(float(v) for v in result.confidence_interval)

    got = stats.session_interval(list(a))
    assert got.method == "bca-bootstrap" and (got.low, got.high) == one_at_a_time((a,), np.median)
    got = stats.ratio_interval(list(a), list(b), paired=False)
    want = one_at_a_time((a, b), lambda x, y: np.median(x) / np.median(y))
    assert got.method == "bca-bootstrap" and (got.low, got.high) == want


def test_interval_method_is_named():
    assert stats.session_interval([1.0, 1.1, 0.9]).method == "t-log"
    assert stats.session_interval(list(np.linspace(1, 2, 12))).method == "bca-bootstrap"
    assert stats.session_interval([1.0]).method == "n/a"


def _session(backend, medians_ms, graphs=(False,), status="ok", bytes_total=1_000_000, throttle=0, cv=0.0):
    rng = np.random.default_rng(0)
    blocks = []
    for g in graphs:
        steps = list(np.asarray(medians_ms) * (1 + cv * rng.standard_normal(30)))
        blocks.append({"graphs": g, "status": status, "reason": "", "event_ms": steps, "wall_ms": steps})
    result = {
        "status": "ok",
        "reason": "",
        "label": backend,
        "kernel": "k",
        "bytes": {"total": bytes_total},
        "provenance": {"copy_bandwidth_gbps": 250.0},
        "blocks": blocks,
        "nvml_after": {"throttle_reasons": throttle},
    }
    config = {
        "model": "tiny",
        "backend": backend,
        "ctx": 32,
        "weights": "synthetic",
        "device": "cuda",
        "graphs": list(graphs),
        "steps": 30,
        "group_size": 128,
    }
    return _record(config, result)


def _record(config: dict, result: dict, run_id: str = "r1") -> dict:
    from qbench.compare import cell_hash

    return {"config": config, "result": result, "gpu": "l4", "run_id": run_id, "cell_hash": cell_hash(config, "L4")}


def test_impossible_noisy_and_throttled_flags():
    # L4 peak 300 GB/s: 1 MB takes 0.0033 ms, so 0.001 ms/step is below the floor: impossible
    rows = aggregate([_session("bf16", 0.001)])
    assert "impossible" in rows[0]["flags"]
    assert aggregate([_session("bf16", 5.0, cv=0.3)])[0]["flags"] == ["noisy"]
    assert aggregate([_session("bf16", 5.0, throttle=0x4)])[0]["flags"] == ["throttled 1/1"]
    assert aggregate([_session("bf16", 5.0, throttle=0x1)])[0]["flags"] == []  # idle is no throttle


def test_a_step_that_never_ran_the_claimed_kernel_is_flagged():
    session = _session("bnb-nf4", 5.0)
    session["result"]["kernel_seen"] = False
    assert aggregate([session])[0]["flags"] == ["kernel-not-seen"]


def test_incorrect_blocks_get_no_latency():
    rows = aggregate([_session("bf16", 5.0), _session("x", 1.0, status="incorrect")])
    wrong = next(r for r in rows if r["backend"] == "x")
    assert wrong["status"] == "incorrect" and "ms_per_step" not in wrong and "realised_speedup" not in wrong


def test_ratios_against_bf16_and_graphs():
    sessions = [_session("bf16", m, graphs=(False, True)) for m in (10.0, 10.2)]
    sessions += [_session("q4", m, graphs=(False, True), bytes_total=250_000) for m in (5.0, 5.1)]
    rows = {(r["backend"], r["graphs"]): r for r in aggregate(sessions)}
    q4 = rows[("q4", "off")]
    assert q4["expected_reduction"] == pytest.approx(4.0)
    assert q4["realised_speedup"] == pytest.approx(10.1 / 5.05)
    assert q4["realisation_pct"] == pytest.approx(100 * q4["realised_speedup"] / 4)
    assert rows[("bf16", "on")]["graphs_speedup"] == pytest.approx(1.0)


def test_replication_view_pairs_eager_and_graph():
    from qbench.report import render_replication, replication_rows

    sessions = [_session("bf16", m, graphs=(False, True)) for m in (10.0, 10.4, 9.8)]
    for record, graph_ms in zip(sessions, (8.0, 8.2, 7.9), strict=True):
        record["result"]["blocks"][1]["event_ms"] = [graph_ms] * 30
    (cell,) = replication_rows(aggregate(sessions))
    assert cell["eager_ms"] == pytest.approx(10.0) and cell["graph_ms"] == pytest.approx(8.0)
    assert cell["graphs_speedup"] == pytest.approx(1.25)
    assert cell["graphs_interval"].method == "t-log"
    assert "1.25" in render_replication([cell], "table")


def test_kernel_view_medians_shares_and_basis():
    from qbench.report import kernel_rows, render_kernels

    copy = "void at::native::elementwise_kernel<128, 4, at::native::direct_copy_kernel_cuda>"
    sessions = []
    for gemv_us, copy_us in ((600.0, 300.0), (620.0, 310.0), (610.0, 290.0)):
        record = _session("bf16", 5.0)
        record["result"]["step_kernels"] = [
            {"name": "gemv", "count": 7, "gpu_us": gemv_us},
            {"name": copy, "count": 2, "gpu_us": copy_us},
        ]
        record["result"]["step_gpu_us"] = 1000.0
        sessions.append(record)
    cpu = _session("bf16", 5.0)
    cpu["config"]["ctx"] = 64  # a CPU session stores no profile: no rows for its cell
    rows = kernel_rows([*sessions, cpu])
    assert [(r["kernel"], r["gpu_us"], r["share_of_step"]) for r in rows] == [("gemv", 610.0, 0.61), (copy, 300.0, 0.3)]
    assert rows[0]["step_basis"] == "all kernels" and rows[0]["sessions"] == "3/3"
    # shortened, and escaped for Markdown (a `<` in a name is data: it renders as the same text)
    assert "elementwise_kernel&lt;128, 4, direct_copy_kernel_cuda>" in render_kernels(rows, "md")
    del sessions[0]["result"]["step_gpu_us"]  # older results: shares of the stored kernels' sum
    older = kernel_rows(sessions)
    assert older[0]["step_basis"] == "12 largest kernels stored" and older[0]["step_gpu_ms"] == pytest.approx(
        0.9
    )  # sums 900, 930, 900 us


def test_different_configurations_never_pool():
    """g128 and g32 of one backend, or 30 and 10 timed steps, are different cells: never one row,
    and a ratio only compares rows whose configuration differs in the backend alone."""
    g128 = [_session("q4", m, bytes_total=250_000) for m in (5.0, 5.2)]
    g32 = [_session("q4", m, bytes_total=280_000) for m in (7.0, 7.1)]
    for record in g32:
        record["config"]["group_size"] = 32
    short = [_session("bf16", 20.0)]
    short[0]["config"]["steps"] = 10
    sessions = [*(_record(r["config"], r["result"]) for r in g32), *g128, _session("bf16", 10.0), *short]
    for record in sessions:  # recompute each cell's hash from its (edited) configuration
        record.update(_record(record["config"], record["result"]))
    rows = aggregate(sessions)
    q4 = {r["group_size"]: r for r in rows if r["backend"] == "q4"}
    assert q4[128]["sessions"] == "2/2" and q4[32]["sessions"] == "2/2"
    assert q4[128]["ms_per_step"] == pytest.approx(5.1) and q4[32]["ms_per_step"] == pytest.approx(7.05)
    assert q4[128]["realised_speedup"] == pytest.approx(10.0 / 5.1)  # against the bf16 with 30 steps
    bf16 = {r["steps"]: r for r in rows if r["backend"] == "bf16"}
    assert bf16[10]["ms_per_step"] == pytest.approx(20.0) and bf16[30]["ms_per_step"] == pytest.approx(10.0)
    assert bf16[10]["comparison"] != bf16[30]["comparison"]
    csv_text = render(rows, "csv")
    header = csv_text.splitlines()[0].split(",")
    assert {"run_ids", "steps", "warmup", "group_size"} <= set(header)


def _with_host(record: dict, launch_us: list[float], cpu_ms: float = 20.0) -> dict:
    for block in record["result"]["blocks"]:
        block["host"] = {
            "before": {"launch_us": launch_us[0], "cpu_ms": cpu_ms},
            "after": {"launch_us": launch_us[1], "cpu_ms": cpu_ms},
            "steal_pct": 0.0,
        }
    return record


def test_host_variable_flag_and_launch_column():
    from qbench.report import HOST_VARIABLE_SPREAD

    steady = [_with_host(_session("bf16", m), [5.0, 5.2]) for m in (10.0, 10.1)]
    rows = aggregate(steady)
    assert rows[0]["flags"] == [] and rows[0]["launch_us"] == pytest.approx(5.1)
    # One session's host launched kernels 1.6x slower: the cell is flagged, its figures kept.
    shifted = [_with_host(_session("bf16", 10.0), [5.0, 5.1]), _with_host(_session("bf16", 16.0), [8.0, 8.2])]
    row = aggregate(shifted)[0]
    assert "host-variable" in row["flags"] and row["host_spread"] > HOST_VARIABLE_SPREAD
    assert row["ms_per_step"] == pytest.approx(13.0)
    just_under = [_with_host(_session("bf16", 10.0), [5.0, 5.0 * HOST_VARIABLE_SPREAD])]
    assert "host-variable" not in aggregate(just_under)[0]["flags"]
    assert "launch us" in render(rows, "table")
