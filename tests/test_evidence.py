"""Energy per token, prefill (time to first token), memory measured one way, KL divergence, and the
deployment report's rule: each read or decided as qbench.session.energy, qbench.session.decode,
qbench.session.quality and qbench.deploy_report say, on fakes where the real counter needs a GPU."""

import csv
import io
import json
import math
import types

import pytest
import torch

from qbench.analysis.stats import Interval
from qbench.deploy_report import Budget, Cell, recommend, tick_text
from qbench.report import aggregate, render
from qbench.session.decode import DecodeSettings, run_block, token_stream
from qbench.session.quality import kl_divergence
from qbench.session.run import energy

# ---- energy ------------------------------------------------------------------------------------


def fake_nvml(energy_mj, power_mw=None, processes=(), used_bytes=0):
    """A pynvml stand-in: `energy_mj()` gives the counter's next reading."""
    module = types.SimpleNamespace()
    module.nvmlInit = lambda: None
    module.nvmlDeviceGetHandleByIndex = lambda index: "handle"
    module.nvmlDeviceGetTotalEnergyConsumption = lambda handle: energy_mj()
    if power_mw is not None:
        module.nvmlDeviceGetPowerUsage = lambda handle: power_mw
    module.nvmlDeviceGetComputeRunningProcesses = lambda handle: list(processes)
    module.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(used=used_bytes)
    return module


def test_the_nvml_counter_gives_joules_and_measures_its_refresh():
    readings = iter([1000, 1000, 1010, 1010, 1020, 1030, 1040, 1050, 5000, 8000])
    meter = energy.NvmlCounter(fake_nvml(lambda: next(readings)), "handle")
    assert meter.counter_update_ms is not None and meter.counter_update_ms >= 0
    began = meter.start()  # 5000 mJ
    assert meter.joules_since(began) == pytest.approx(3.0)  # 8000 - 5000 mJ
    assert "mJ" in meter.resolution and "NVML" in meter.source


def test_a_window_shorter_than_ten_counter_refreshes_gives_no_figure():
    meter = energy.EnergyMeter()
    meter.available, meter.counter_update_ms = True, 100.0
    short = energy.block_energy(0.6, 30, 0.15, meter, "the 30 timed steps")
    assert "j_per_token" not in short and short["energy"].startswith("not measured: the 30 timed steps took 150 ms")
    long = energy.block_energy(6.0, 300, 1.5, meter, "the 300 timed steps")
    assert long["j_per_token"] == pytest.approx(0.02) and long["mean_w"] == pytest.approx(4.0)
    assert long["energy_over"] == "the 300 timed steps"


def test_no_meter_says_not_measured():
    assert energy.block_energy(None, 30, 0.1, energy.EnergyMeter(), "x") == {"energy": "not measured"}


def test_power_samples_integrate_by_trapezoids():
    assert energy.integrate([(0.0, 100.0), (1.0, 200.0), (3.0, 200.0)]) == pytest.approx(150 + 400)
    assert energy.integrate([(0.0, 100.0)]) is None


def test_rapl_counter_wraps_at_its_range(tmp_path):
    (tmp_path / "max_energy_range_uj").write_text("1000000\n")
    (tmp_path / "energy_uj").write_text("999000\n")
    meter = energy.RaplCounter(tmp_path)
    began = meter.start()
    (tmp_path / "energy_uj").write_text("4000\n")  # wrapped: 1000 + 4000 uJ later
    assert meter.joules_since(began) == pytest.approx(0.005)


def test_a_cpu_without_rapl_is_not_measured(monkeypatch, tmp_path):
    monkeypatch.setattr(energy, "RAPL", tmp_path / "absent")
    meter, why = energy.energy_meter("cpu")
    assert not meter.available and why.startswith("not measured")


def test_memory_is_nvml_per_process_or_the_device_less_its_baseline(monkeypatch):
    import os

    mine = types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=3 * 2**30)
    listed = fake_nvml(lambda: 0, processes=[mine], used_bytes=10 * 2**30)
    monkeypatch.setattr(energy, "_nvml_handle", lambda index: (listed, "handle"))
    held = energy.process_memory([os.getpid()], baseline_used_mib=1024.0)
    assert held == {"gpu_memory_mib": 3072.0, "gpu_memory_source": "NVML per process (CUDA context included)"}
    hidden = fake_nvml(lambda: 0, processes=[], used_bytes=10 * 2**30)
    monkeypatch.setattr(energy, "_nvml_handle", lambda index: (hidden, "handle"))
    held = energy.process_memory([os.getpid()], baseline_used_mib=1024.0)
    assert held["gpu_memory_mib"] == 9216.0 and "less before the session" in held["gpu_memory_source"]


# ---- prefill and energy in the decode loop -----------------------------------------------------


class CountingRunner:
    device = torch.device("cpu")
    graph = None
    use_graph = False

    def __init__(self):
        self.prefills = 0

    def prefill(self, tokens):
        self.prefills += 1

    def step(self, token):
        return torch.nn.functional.one_hot(token.view(()), 16).float()


class FakeMeter(energy.EnergyMeter):
    available = True
    source = "fake counter"
    resolution = "1 mJ"

    def __init__(self):
        self.calls = 0

    def start(self):
        self.calls += 1
        return energy.Reading(0.0, __import__("time").perf_counter())

    def joules_since(self, begin):
        return 0.3


def test_a_block_times_its_prefill_and_reads_energy_around_the_timed_steps():
    meter = FakeMeter()
    settings = DecodeSettings(ctx=8, warmup=2, steps=5)
    tokens = token_stream(16, settings.positions, seed=1, device="cpu")
    runner = CountingRunner()
    result = run_block(runner, settings, tokens, graphs=False, meter=meter)
    assert runner.prefills == 1 and result.prefill_ms is not None and result.prefill_ms >= 0
    assert result.prefill_wall_ms == result.prefill_ms  # CPU: the wall clock
    assert meter.calls == 1
    assert result.energy["j_per_token"] == pytest.approx(0.06)
    assert result.energy["mean_w"] > 0


def test_the_sessions_first_block_warms_its_prefill_up_untimed():
    settings = DecodeSettings(ctx=8, warmup=0, steps=2)
    tokens = token_stream(16, settings.positions, seed=1, device="cpu")
    runner = CountingRunner()
    run_block(runner, settings, tokens, graphs=False, prefill_warmup=True)
    assert runner.prefills == 2  # one untimed, then the timed one


# ---- the fields in every export ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_rows():
    from qbench.compare import cell_hash
    from qbench.session.run import SessionConfig, run_session

    original = energy.energy_meter
    energy.energy_meter = lambda device, index=0: (FakeMeter(), "")
    try:
        config = SessionConfig(model="tiny", backend="bf16", ctx=16, warmup=1, steps=4)
        result = run_session(config)
    finally:
        energy.energy_meter = original
    stored = {**config.__dict__, "graphs": [False]}
    record = {"config": stored, "result": result, "gpu": "cpu", "run_id": "r", "cell_hash": cell_hash(stored, "cpu")}
    return aggregate([record]), record


def test_prefill_energy_and_memory_fields_are_in_every_export(tiny_rows):
    tiny_rows, _ = tiny_rows
    (row,) = json.loads(render(tiny_rows, "json"))
    assert isinstance(row["prefill_ms"], float) and row["prefill_ms"] > 0
    assert row["j_per_token"] == pytest.approx(0.3 / 4) and isinstance(row["mean_w"], float)
    assert row["energy_source"].startswith("fake counter")
    assert row["gpu_memory_mib"] is None and row["gpu_memory_source"] == "not measured"  # a CPU has no NVML
    (flat,) = list(csv.DictReader(io.StringIO(render(tiny_rows, "csv"))))
    for key in ("prefill_ms", "j_per_token", "mean_w", "energy_source", "gpu_memory_mib", "gpu_memory_source"):
        assert key in flat
    assert float(flat["j_per_token"]) == pytest.approx(0.075)
    for fmt in ("table", "md", "latex", "html"):
        text = render(tiny_rows, fmt, wide=True)
        assert "TTFT ms" in text and "J/tok" in text, fmt
    assert "reserved_memory_mib" not in row  # torch's CUDA reserve: read on a GPU only


def test_the_reserve_shown_is_that_of_the_session_whose_memory_the_cell_shows(tiny_rows):
    """GPU MiB is the largest over the sessions; torch's reserve beside it is that same session's (the
    largest reserve of another session would not say what of that figure the allocator held)."""
    from qbench.records import SessionResult

    _, record = tiny_rows
    sessions = []
    for index, (held, reserved) in enumerate(((9860.0, 3900.0), (7696.0, 4100.0), (7696.0, 1736.0))):
        result = {**record["result"], "gpu_memory_mib": held, "reserved_memory_mib": reserved,
                  "allocated_memory_mib": reserved - 100 * index - 50,
                  "gpu_memory_source": "NVML per process (CUDA context included)"}
        sessions.append({**record, "result": result, "config": {**record["config"], "session_index": index}})
    (row,) = aggregate(sessions)
    assert row["gpu_memory_mib"] == 9860.0 and row["reserved_memory_mib"] == 3900.0
    assert row["allocated_memory_mib"] == 3850.0  # the same session's
    (flat,) = list(csv.DictReader(io.StringIO(render([row], "csv"))))
    assert float(flat["reserved_memory_mib"]) == 3900.0 and float(flat["allocated_memory_mib"]) == 3850.0
    assert "reserved MiB" in render([row], "md", wide=True)
    with pytest.raises(ValueError, match="reserved_memory_mib"):
        SessionResult(status="ok", reserved_memory_mib="3900")
    # the session with the largest GPU MiB recorded no reserve (an older qbench): none is shown, not another's
    older = {k: v for k, v in sessions[0]["result"].items() if k not in ("reserved_memory_mib", "allocated_memory_mib")}
    (row,) = aggregate([{**sessions[0], "result": older}, *sessions[1:]])
    assert row["gpu_memory_mib"] == 9860.0 and "reserved_memory_mib" not in row and "allocated_memory_mib" not in row


# ---- quality -----------------------------------------------------------------------------------


def test_kl_divergence_against_a_hand_computed_case():
    reference = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.9, 0.05, 0.05]]))
    measured = torch.log(torch.tensor([[0.25, 0.5, 0.25], [0.9, 0.05, 0.05]]))
    # position 0: 0.5 ln(0.5/0.25) + 0.25 ln(0.25/0.5) + 0 = 0.25 ln 2; position 1: 0
    kl = kl_divergence(reference, measured)
    assert kl["kl_mean"] == pytest.approx(0.25 * math.log(2) / 2, rel=1e-5)
    assert kl["kl_p99"] == pytest.approx(0.99 * 0.25 * math.log(2), rel=1e-4)  # linear between the two
    assert kl["top1_agreement"] == 0.5 and kl["positions"] == 2


# ---- the report's rule -------------------------------------------------------------------------


def cell(name, ms, low, high, memory, kl=None):
    row = {
        "label": name, "runtime": "lean", "graphs": "on", "status": "ok", "flags": [], "ms_per_step": ms,
        "ms_interval": Interval(low, high, "t"), "baseline": name == "bf16", "kl_mean": kl,
    }  # fmt: skip
    return Cell("A", row, memory_mib=memory)


def test_the_fastest_within_the_budget_wins_even_when_it_needs_more_memory():
    fast_big = cell("fast", 3.0, 2.9, 3.1, 9000)
    slow_small = cell("small", 4.0, 3.9, 4.1, 5000)
    chosen = recommend([slow_small, fast_big], Budget("ms", 10.0)).chosen
    assert chosen is fast_big  # memory no longer outranks speed


def test_memory_breaks_a_tie_the_intervals_cannot_then_quality():
    fast_big = cell("fast", 3.00, 2.80, 3.20, 9000)
    tied_small = cell("small", 3.10, 2.95, 3.30, 5000)  # its interval overlaps the fastest's
    clearly_slower = cell("slow", 3.60, 3.50, 3.70, 1000)
    recommendation = recommend([fast_big, tied_small, clearly_slower], Budget("ms", 10.0))
    assert recommendation.chosen is tied_small
    assert ("the fastest, tied within its interval", fast_big) in recommendation.alternatives
    better = cell("better", 3.05, 2.9, 3.2, 5000, kl=0.01)
    worse = cell("worse", 3.02, 2.9, 3.2, 5000, kl=0.05)
    assert recommend([worse, better], Budget("ms", 10.0)).chosen is better


def test_a_memory_budget_takes_the_fastest_that_fits():
    cells = [cell("a", 3.0, 2.9, 3.1, 9000), cell("b", 4.0, 3.9, 4.1, 5000), cell("c", 5.0, 4.9, 5.1, 4000)]
    assert recommend(cells, Budget("mib", 6000)).chosen.row["label"] == "b"


def test_axis_labels_read_as_numbers():
    assert [tick_text(v) for v in (1000.0, 20000.0, 5.0, 0.5, 0.02)] == ["1,000", "20,000", "5", "0.5", "0.02"]


# ---- the energy window after the timed steps (qbench.session.decode.energy_window) ----------------------


class Clock:
    """A clock the fake step advances: windows of known length without sleeping."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


class ClockedCounter(energy.EnergyMeter):
    """An NVML-like counter refreshing every 100 ms; 2 W of power over the fake clock."""

    available = True
    source = "fake counter"
    counter_update_ms = 100.0

    def __init__(self, clock):
        self.clock = clock

    def start(self):
        return energy.Reading(2.0 * self.clock.now, self.clock.now)

    def joules_since(self, begin):
        return 2.0 * self.clock.now - begin.joules


class PositionRunner:
    """A runner stepping through qbench.runtimes.modules.step (which refuses a position past the
    cache), recording the position each step (eager or "replayed") ran at; each step takes 4 ms."""

    device = torch.device("cpu")
    runtime = "lean"
    graphs = "qbench"
    replays_at_positions = True

    def __init__(self, clock, max_cache_len, energy_room):
        self.clock, self.max_cache_len, self.energy_room = clock, max_cache_len, energy_room
        self.token = torch.zeros(1, 1, dtype=torch.long)
        self.position = torch.zeros(1, dtype=torch.long)
        self.next_position, self.use_graph, self.written = 0, False, []
        self.graph = types.SimpleNamespace(replay=self._compute)
        self.graph_logits = torch.zeros(16)

    def _compute(self):
        self.written.append(int(self.position[0]))
        self.clock.now += 0.004
        return torch.zeros(16)

    def step(self, token):
        from qbench.runtimes import modules

        return modules.step(self, token, self._compute)


@pytest.fixture
def clock(monkeypatch):
    import qbench.session.decode

    clock = Clock()
    monkeypatch.setattr(qbench.session.decode, "time", clock)
    return clock


TIMED = {"energy": "not measured: the 30 timed steps took 120 ms, fewer than 10 refreshes", "energy_window_ms": 120.0}


@pytest.mark.parametrize("graphs", [True, False])
def test_an_energy_window_spans_enough_refreshes_at_advancing_positions_within_the_cache(clock, graphs):
    from qbench.session.decode import ENERGY_WINDOW_REFRESHES, energy_window
    from qbench.session.positions import SPARE_POSITIONS, cache_positions

    block = cache_positions(8, 2, 30)
    runner = PositionRunner(clock, block + 400, energy_room=400)
    runner.use_graph = graphs
    runner.next_position = 40  # after the timed steps: ctx 8 + 2 warm-up + 30 timed
    tokens = token_stream(16, 40, seed=1, device="cpu")
    fields = energy_window(runner, tokens, 40, graphs, ClockedCounter(clock), dict(TIMED), [4.0] * 30)
    steps = ENERGY_WINDOW_REFRESHES * 100 // 4  # 300 steps of 4 ms: 12 refreshes of 100 ms
    assert fields["energy_window_steps"] == steps and runner.written == list(range(40, 40 + steps))
    assert max(runner.written) < runner.max_cache_len - SPARE_POSITIONS  # the spare positions stay free
    assert fields["energy_window_ms"] == pytest.approx(steps * 4.0) and steps * 4.0 >= 10 * 100.0
    assert fields["j_per_token"] == pytest.approx(2.0 * 0.004) and fields["mean_w"] == pytest.approx(2.0)
    kind = "graph replays" if graphs else "eager steps"
    assert fields["energy_over"].startswith(f"an energy window of {steps} {kind} after the timed steps")


def test_an_energy_window_that_would_pass_the_cache_is_not_taken(clock):
    from qbench.session.decode import energy_window
    from qbench.session.positions import cache_positions

    runner = PositionRunner(clock, cache_positions(8, 2, 30) + 299, energy_room=299)  # one short of 300
    runner.next_position = 40
    tokens = token_stream(16, 40, seed=1, device="cpu")
    fields = energy_window(runner, tokens, 40, True, ClockedCounter(clock), dict(TIMED), [4.0] * 30)
    assert runner.written == [] and "j_per_token" not in fields
    assert fields["energy"].startswith(TIMED["energy"]) and "300 steps" in fields["energy"]
    assert "299 are left" in fields["energy"]
    # and a step at a position past the cache is refused, whoever asks
    runner.next_position = runner.max_cache_len
    with pytest.raises(RuntimeError, match="full"):
        runner.step(tokens[:1])
    assert runner.written == []


def test_hf_gives_no_energy_window_without_room_nor_of_graph_replays(clock):
    from qbench.api import LoadOptions
    from qbench.registry import load_backend
    from qbench.session.decode import energy_window
    from qbench.session.positions import cache_positions
    from qbench.specs import load_model_spec

    spec = load_model_spec("tiny")
    options = LoadOptions(device="cpu", max_cache_len=cache_positions(8, 2, 30), energy_positions=1024)
    runner = load_backend("bf16").load(spec, options)  # hf: the room is lean's to give
    assert runner.runtime == "hf" and runner.max_cache_len == cache_positions(8, 2, 30)
    tokens = token_stream(spec.vocab_size, 40, seed=1, device="cpu")
    runner.prefill(tokens[:8])
    runner.next_position = 40
    eager = energy_window(runner, tokens, 40, False, ClockedCounter(clock), dict(TIMED), [4.0] * 30)
    assert "j_per_token" not in eager and "0 are left" in eager["energy"] and runner.next_position == 40
    replays = energy_window(runner, tokens, 40, True, ClockedCounter(clock), dict(TIMED), [4.0] * 30)
    assert "no energy window of graph replays under hf" in replays["energy"] and runner.next_position == 40


def test_a_short_timed_block_takes_its_energy_from_the_window(clock):
    from qbench.session.positions import cache_positions

    settings = DecodeSettings(ctx=8, warmup=2, steps=30)
    runner = PositionRunner(clock, cache_positions(8, 2, 30) + 400, energy_room=400)
    runner.prefill = lambda tokens: setattr(runner, "next_position", tokens.numel())
    tokens = token_stream(16, settings.positions, seed=1, device="cpu")
    result = run_block(runner, settings, tokens, graphs=False, meter=ClockedCounter(clock))
    # the 30 timed steps took 120 ms on the fake clock: the figure comes from the window after them
    assert result.energy["energy_over"].startswith("an energy window of")
    assert result.energy["energy_window_ms"] >= 1000 and result.energy["j_per_token"] == pytest.approx(0.008)
    # warm-up and timed steps at 8..39, then the window's at 40, 41, ... (no position twice)
    assert runner.written == list(range(8, 40 + result.energy["energy_window_steps"]))


def test_lean_gives_the_energy_room_only_where_its_attention_reads_up_to_the_position(monkeypatch):
    from qbench.api import LoadOptions
    from qbench.registry import load_backend
    from qbench.specs import load_model_spec

    monkeypatch.setenv("QBENCH_LEAN_ATTENTION", "sdpa")  # reads the whole cache: room would slow every step
    options = LoadOptions(device="cpu", max_cache_len=40, energy_positions=64, runtime="lean")
    runner = load_backend("bf16").load(load_model_spec("tiny"), options)
    assert runner.max_cache_len == 40 and runner.energy_room == 0
    assert any("no cache room for an energy window" in note for note in runner.notes)


def test_the_report_says_when_an_energy_window_gave_the_figure(monkeypatch):
    from qbench.compare import cell_hash
    from qbench.session.run import SessionConfig, run_session

    monkeypatch.setattr(energy, "energy_meter", lambda device, index=0: (FakeMeter(), ""))
    config = SessionConfig(model="tiny", backend="bf16", ctx=16, warmup=1, steps=4)
    result = run_session(config)
    stored = {**config.__dict__, "graphs": [False]}
    record = {"config": stored, "result": result, "gpu": "cpu", "run_id": "r", "cell_hash": cell_hash(stored, "cpu")}
    (timed,) = aggregate([record])
    assert "energy window" not in timed["energy_source"]
    for block in result["blocks"]:  # as qbench.session.decode.energy_window leaves a block
        block.update(energy_window_steps=300, energy_over="an energy window of 300 graph replays after ...")
    (windowed,) = aggregate([record])
    assert windowed["energy_source"].startswith("fake counter") and "energy window" in windowed["energy_source"]
