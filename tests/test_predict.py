"""`qbench predict` on the CPU: the model on constructed kernel profiles with known answers, every
GPU spec predicted from the committed H100 measurements, `compare --gpu l4` pointing to predict, and
a predicted figure never stored as a measurement."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from qbench.analysis.predict import kernel_class, predict
from qbench.cli import main
from qbench.compare import cell_hash
from qbench.errors import UserError
from qbench.specs import gpu_specs, load_gpu_spec

ROOT = Path(__file__).resolve().parent.parent
H100_RUNTIMES = ROOT / "results" / "h100" / "runtimes" / "runtimes.sqlite"


def session(index: int, eager_ms: float, graph_ms: float, launch_us: float) -> dict:
    config = {
        "model": "qwen2.5-7b", "backend": "bf16", "runtime": "hf", "ctx": 2048, "device": "cuda",
        "graphs": [False, True], "warmup": 5, "steps": 30, "weights": "synthetic", "group_size": 128,
        "seed": 0, "session_index": index, "rounds": 1, "cpu": "off",
    }  # fmt: skip
    host = {"before": {"launch_us": launch_us}, "after": {"launch_us": launch_us}}
    blocks = [
        {"graphs": False, "status": "ok", "wall_ms": [eager_ms] * 4, "event_ms": [eager_ms] * 4, "host": host},
        {"graphs": True, "status": "ok", "wall_ms": [graph_ms] * 4, "event_ms": [graph_ms] * 4, "host": host},
    ]
    result = {
        "status": "ok",
        "blocks": blocks,
        "runtime": "hf",
        "baseline": True,
        # 4000 us of matrix kernels, 500 of attention, 500 of small kernels named and 500 unnamed
        "step_kernels": [
            {"name": "nvjet_sm90_tst_256x8_TNT", "count": 196, "gpu_us": 4000.0},
            {"name": "cudnn_generated_fort_native_sdpa_sm90_flash_fprop", "count": 28, "gpu_us": 500.0},
            {"name": "rms_norm_kernel", "count": 57, "gpu_us": 500.0},
        ],
        "step_gpu_us": 5500.0,
        "bytes": {
            "linear_weights": 12_000_000_000, "lm_head": 1_000_000_000, "biases": 0, "kv_cache": 100_000_000,
            "total": 13_100_000_000,
        },  # fmt: skip
    }
    hashed = cell_hash(config, "H100")
    return {"config": config, "result": result, "gpu": "h100-sxm5", "run_id": "r1", "cell_hash": hashed}


def test_kernel_classes():
    assert kernel_class("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma") == "attention"
    assert kernel_class("nvjet_sm90_tst_64x8_64x16_2x1_v_bz_splitK_TNT") == "weights"
    assert kernel_class("void marlin::Marlin<...>") == "weights"
    assert kernel_class("mul_mat_vec_q<...>") == "weights"
    assert kernel_class("elementwise_kernel<128, 4>") == "small"


def test_model_on_a_constructed_profile_gives_the_known_answer():
    """Calibrated on the H100 profile above, predicted for the A100 80GB (other bandwidth and clock)."""
    from qbench.analysis.floor import step_bytes
    from qbench.registry import load_backend
    from qbench.specs import load_model_spec

    sessions = [session(i, eager_ms=20.0, graph_ms=6.6, launch_us=10.0) for i in range(3)]
    h100, a100 = load_gpu_spec("h100-sxm5"), load_gpu_spec("a100-80gb-sxm4")
    spec = load_model_spec("qwen2.5-7b")
    counted = step_bytes(spec, 4096, load_backend("bf16").linear_bytes, 128)
    # by hand: fractions of bandwidth from the profile, the target's bandwidth and clock, 28 layers both
    f_w = 13e9 / 4000e-6 / (h100.peak_bandwidth_gbps * 1e9)
    f_a = 0.1e9 / 500e-6 / (h100.peak_bandwidth_gbps * 1e9)
    weights = counted.linear_weights + counted.lm_head + counted.biases
    gpu_us = weights / (f_w * a100.peak_bandwidth_gbps * 1e9) * 1e6
    gpu_us += counted.kv_cache / (f_a * a100.peak_bandwidth_gbps * 1e9) * 1e6
    gpu_us += 1000.0 * h100.boost_clock_mhz / a100.boost_clock_mhz
    graph = gpu_us / 1e3 * 6.6 / 5.5

    rows, skipped = predict("qwen2.5-7b", "a100-80gb-sxm4", ["bf16"], ("hf",), (4096,), (True, False), sessions)
    assert not skipped
    by_graphs = {r.graphs: r for r in rows}
    assert by_graphs["on"].ms == pytest.approx(graph, rel=1e-9)
    assert by_graphs["on"].predicted is True
    assert by_graphs["on"].pct_of_floor == pytest.approx(100 * counted.total / (a100.peak_bandwidth_gbps * 1e6) / graph)
    # eager: the host's 20 ms (same layers, same launch cost) is slower than the GPU's time
    assert by_graphs["off"].ms == pytest.approx(20.0)
    assert "launch cost" in by_graphs["off"].note
    # a target host that launches twice as fast halves the host-bound eager step
    rows, _ = predict(
        "qwen2.5-7b", "a100-80gb-sxm4", ["bf16"], ("hf",), (4096,), (False,), sessions, launch_us=5.0
    )
    assert rows[0].ms == pytest.approx(max(10.0, graph))


def test_never_calibrates_on_the_target_itself():
    sessions = [session(i, 20.0, 6.6, 10.0) for i in range(2)]
    from qbench.errors import UserError

    with pytest.raises(UserError, match="no profiled, timed measurement"):
        predict("qwen2.5-7b", "h100-sxm5", ["bf16"], ("hf",), (2048,), (True,), sessions)


@pytest.mark.skipif(not H100_RUNTIMES.is_file(), reason="needs the committed H100 results")
def test_every_gpu_spec_is_predicted_from_the_h100_measurements():
    for name in gpu_specs():
        if name == "h100-sxm5":
            continue
        args = ["predict", "--model", "qwen2.5-7b", "--gpu", name, "--backends", "bf16,torch-int4"]
        args += ["--runtimes", "hf,lean", "--db", str(H100_RUNTIMES), "--format", "json"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert len(data["predicted"]) == 8, (name, data["skipped"])  # 2 backends x 2 runtimes x 2 graphs settings
        for row in data["predicted"]:
            assert row["predicted"] is True and row["gpu"] == name
            assert 0 < row["ms"] < 1e4 and 0 < row["pct_of_floor"] <= 100
    table = CliRunner().invoke(main, ["predict", "--gpu", "l4", "--db", str(H100_RUNTIMES)])
    assert table.exit_code == 0 and table.stdout.startswith("PREDICTED (not measured)")


def test_compare_for_a_gpu_not_here_points_to_predict():
    result = CliRunner().invoke(main, ["compare", "--model", "qwen2.5-7b", "--gpu", "l4", "--backends", "bf16"])
    assert result.exit_code == 3  # the PREDICTED table from the shipped calibration (tests/test_headline.py)
    assert "PREDICTED (not measured): qwen2.5-7b on l4" in result.output
    assert "qbench predict --model qwen2.5-7b --gpu l4 --backends bf16 --ctx 512" in result.output


@pytest.mark.skipif(not H100_RUNTIMES.is_file(), reason="needs the committed H100 results")
def test_a_prediction_is_never_stored(tmp_path):
    db = tmp_path / "copy.sqlite"
    shutil.copy(H100_RUNTIMES, db)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    result = CliRunner().invoke(main, ["predict", "--gpu", "l4", "--db", str(db), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.sqlite"]


def test_against_puts_each_prediction_beside_the_targets_measurement(tmp_path):
    """--against: the target's measured cell beside the prediction, its error, and for eager the
    target host's measured launch cost instead of the calibration host's."""
    calibration = [session(i, eager_ms=20.0, graph_ms=6.6, launch_us=10.0) for i in range(3)]
    on_a100 = []
    for i in range(3):  # measured on the target: the host launches twice as fast as the H100's did
        record = session(i, eager_ms=10.0, graph_ms=8.0, launch_us=5.0)
        record.update(gpu="a100-80gb-sxm4", cell_hash=cell_hash(record["config"], "A100"), run_id="r2")
        on_a100.append(record)
    plain, _ = predict("qwen2.5-7b", "a100-80gb-sxm4", ["bf16"], ("hf",), (2048,), (True, False), calibration)
    rows, skipped = predict(
        "qwen2.5-7b", "a100-80gb-sxm4", ["bf16"], ("hf",), (2048,), (True, False), calibration, against=on_a100
    )
    assert not skipped
    by_graphs, plain_by = {r.graphs: r for r in rows}, {r.graphs: r for r in plain}
    graph = by_graphs["on"]
    assert graph.ms == pytest.approx(plain_by["on"].ms)  # measurements on the target never calibrate
    assert graph.measured_ms == pytest.approx(8.0)
    assert graph.error_pct == pytest.approx(100 * (graph.ms - 8.0) / 8.0)
    eager = by_graphs["off"]  # host-bound: 20 ms at 10 us a launch, so 10 ms at the target's 5 us
    assert eager.ms == pytest.approx(max(10.0, graph.ms)) and eager.measured_ms == pytest.approx(10.0)
    assert plain_by["off"].ms == pytest.approx(20.0)
    with pytest.raises(UserError, match="no timed measurement on a100-80gb-sxm4"):
        predict("qwen2.5-7b", "a100-80gb-sxm4", ["bf16"], ("hf",), (2048,), (True,), calibration, against=calibration)


@pytest.mark.skipif(not H100_RUNTIMES.is_file(), reason="needs the committed H100 results")
def test_predict_against_on_the_command_line(tmp_path):
    args = ["predict", "--gpu", "a100-80gb-sxm4", "--db", str(H100_RUNTIMES), "--against", str(tmp_path / "no.sqlite")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "--against" in result.output and "does not exist" in result.output
    args[-1] = str(H100_RUNTIMES)  # measured on an H100, not on the A100 predicted
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "no timed measurement on a100-80gb-sxm4" in result.output


def test_against_takes_the_targets_cell_with_the_most_sessions():
    """Two measured cells share a key (another group size): the one with more sessions is compared."""
    calibration = [session(i, eager_ms=20.0, graph_ms=6.6, launch_us=10.0) for i in range(3)]
    on_a100 = []
    for group_size, graph_ms, count in ((64, 9.0, 2), (128, 8.0, 3)):
        for i in range(count):
            record = session(i, eager_ms=10.0, graph_ms=graph_ms, launch_us=5.0)
            record["config"]["group_size"] = group_size
            record.update(gpu="a100-80gb-sxm4", cell_hash=cell_hash(record["config"], "A100"), run_id="r2")
            on_a100.append(record)
    for ordered in (on_a100, on_a100[::-1]):
        rows, _ = predict(
            "qwen2.5-7b", "a100-80gb-sxm4", ["bf16"], ("hf",), (2048,), (True,), calibration, against=ordered
        )
        assert rows[0].measured_ms == pytest.approx(8.0)


def test_a_cell_under_other_switches_neither_calibrates_nor_validates():
    """Predictions are of the runtimes at their default switches: a cell timed with QBENCH_LEAN_FOLD=on
    (`compare --vary`) is left out of both sides, where it would otherwise win on sessions."""
    from qbench.settings import DEFAULT_MEASURE_SETTINGS

    def switched(record: dict, gpu: str, label: str) -> dict:
        record["config"]["measure_settings"] = {**DEFAULT_MEASURE_SETTINGS, "QBENCH_LEAN_FOLD": "on"}
        record.update(gpu=gpu, cell_hash=cell_hash(record["config"], label))
        return record

    calibration = [session(i, eager_ms=20.0, graph_ms=6.6, launch_us=10.0) for i in range(3)]
    folded = [switched(session(i, 20.0, 3.3, 10.0), "h100-sxm5", "H100 folded") for i in range(4)]
    alone, _ = predict("qwen2.5-7b", "a100-80gb-sxm4", ["bf16"], ("hf",), (2048,), (True,), calibration)
    both, _ = predict("qwen2.5-7b", "a100-80gb-sxm4", ["bf16"], ("hf",), (2048,), (True,), calibration + folded)
    assert both[0].ms == pytest.approx(alone[0].ms)
    with pytest.raises(UserError, match="no profiled, timed measurement .*; 1 cell.s. under non-default QBENCH_LEAN_"):
        predict("qwen2.5-7b", "a100-80gb-sxm4", ["bf16"], ("hf",), (2048,), (True,), folded)
    on_a100 = [session(i, 10.0, 8.0, 5.0) for i in range(2)]
    for record in on_a100:
        record.update(gpu="a100-80gb-sxm4", cell_hash=cell_hash(record["config"], "A100"), run_id="r2")
    on_a100 += [switched(session(i, 10.0, 4.0, 5.0), "a100-80gb-sxm4", "A100 folded") for i in range(3)]
    rows, _ = predict("qwen2.5-7b", "a100-80gb-sxm4", ["bf16"], ("hf",), (2048,), (True,), calibration, against=on_a100)
    assert rows[0].measured_ms == pytest.approx(8.0)


def test_compare_for_a_gpu_not_here_says_vary_is_not_predicted(monkeypatch):
    args = ["compare", "--model", "qwen2.5-7b", "--gpu", "l4", "--backends", "bf16", "--runtimes", "lean"]
    args += ["--vary", "QBENCH_LEAN_FOLD=off, on"]
    monkeypatch.setattr("sys.argv", ["qbench", *args])  # as the shell passed it: the command qbench repeats
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 3
    assert "--vary QBENCH_LEAN_FOLD: not predicted; every row above is of the default switches." in result.output
    # the measuring command it prints pastes back as typed: the value with a space stays one word
    assert "--vary 'QBENCH_LEAN_FOLD=off, on'" in result.output
