"""A crash, a hang or an out-of-memory in one session becomes a failed row; nothing else is lost."""

from qbench.execute.worker import run_worker
from qbench.records import SessionConfig, SessionResult


def _config(backend: str) -> SessionConfig:
    return SessionConfig(model="tiny", backend=backend, ctx=16, warmup=1, steps=3)


def test_segfault_is_reported_with_its_signal(plugin_dist):
    result = run_worker(_config("fake-segv"), timeout_s=120)
    assert result.status == "crashed" and "SIGSEGV" in result.reason


def test_hang_is_killed_at_the_timeout(plugin_dist):
    result = run_worker(_config("fake-hang"), timeout_s=8)
    assert result.status == "timeout" and "8 s" in result.reason


def test_out_of_memory_is_its_own_status(plugin_dist):
    result = run_worker(_config("fake-oom"), timeout_s=120)
    assert result.status == "oom" and "out of memory" in result.reason


def test_wrong_outputs_are_reported_incorrect_with_no_timings(plugin_dist):
    result = run_worker(_config("fake-wrong"), timeout_s=120)
    assert result.status == "incorrect"
    assert "relative error" in result.reason
    assert result.blocks == []


def test_a_good_session_returns_timings_and_provenance():
    result = run_worker(_config("bf16"), timeout_s=120)
    assert result.status == "ok", result.reason
    (block,) = result.blocks
    assert block["status"] == "ok" and len(block["wall_ms"]) == 3
    assert result.measured_linear_bytes == result.bytes["linear_weights"]
    assert result.provenance["copy_bandwidth_gbps"] > 0
    assert SessionResult.from_json(result.to_json()) == result  # storable as is
