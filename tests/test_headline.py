"""The user's headline command answers on any machine (issue 24, item 1): `qbench compare --model
qwen2.5-7b --gpu l4` without an L4 prints the PREDICTED table from the calibration shipped with qbench
(nothing stored, no worker started) and how to measure it; `qbench predict` needs no --db; the
shipped calibration is exactly what tools/calibration.py makes from the committed store; a 7B model
on a CPU says how long it will take before its first session."""

import configparser
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import qbench.analysis.predict
import qbench.compare
import qbench.execute.local
import qbench.plan
from qbench.analysis.floor import step_bytes
from qbench.backend import DeviceInfo
from qbench.cli import main
from qbench.errors import UserError
from qbench.specs import load_model_spec

ROOT = Path(__file__).resolve().parent.parent
CPU = DeviceInfo("cpu", "cpu")
EXIT_PREDICTED = 3  # qbench.cli.EXIT_PREDICTED: the table is PREDICTED, nothing measured (README)


def no_workers(monkeypatch) -> None:
    """This machine is a CPU, and starting any session or worker fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a worker or session was started")

    for module in (qbench.compare, qbench.plan, qbench.execute.local):  # wherever planning and running look
        monkeypatch.setattr(module, "probe_device", lambda: CPU)
    for name in ("run_worker", "Forkserver", "run_compare", "start_forkserver"):
        monkeypatch.setattr(qbench.execute.local, name, forbidden)
        monkeypatch.setattr(qbench.compare, name, forbidden, raising=False)


def test_the_headline_command_prints_the_predicted_table_and_stores_nothing(tmp_path):
    """The command as a user types it, in a fresh folder: the default store results/qbench.sqlite
    would appear there if anything were stored."""
    probe = "import torch; print(torch.cuda.is_available() and 'L4' in torch.cuda.get_device_name())"
    if subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "True":
        pytest.skip("this machine has an L4: the command measures it")
    command = [sys.executable, "-m", "qbench.cli", "compare", "--model", "qwen2.5-7b", "--gpu", "l4"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == EXIT_PREDICTED, done.stderr
    out = done.stdout
    assert out.startswith("PREDICTED (not measured): qwen2.5-7b on l4")
    assert "PREDICTED ms/step" in out and "Every figure above is predicted" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["bf16"], ["torch-int4"])]
    assert len(rows) == 4 and all(row[1] == "hf" and row[2] == "512" for row in rows)  # 2 backends x graphs off/on
    assert "no session ran and nothing was stored" in out
    assert "calibrated on the shipped h100-sxm5 measurements" in out
    assert "run this on a machine whose GPU is NVIDIA L4" in out
    assert "qbench compare --model qwen2.5-7b --gpu l4" in out.split("run this on a machine")[1]
    assert list(tmp_path.iterdir()) == []  # no store, no results folder, nothing


def test_compare_for_a_gpu_not_here_starts_no_worker(tmp_path, monkeypatch):
    no_workers(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["qbench", "compare", "--model", "qwen2.5-7b", "--gpu", "l4", "--ctx", "2048"])
    result = CliRunner().invoke(main, sys.argv[1:])
    assert result.exit_code == EXIT_PREDICTED, result.output
    assert "PREDICTED (not measured): qwen2.5-7b on l4" in result.stdout
    measure = "NVIDIA L4 24GB (GDDR6):\n  qbench compare --model qwen2.5-7b --gpu l4 --ctx 2048"
    assert measure in result.stdout
    assert list(tmp_path.iterdir()) == []
    # JSON: every row predicted, and the calibration it came from
    result = CliRunner().invoke(main, ["compare", "--model", "qwen2.5-7b", "--gpu", "l4", "--format", "json"])
    assert result.exit_code == EXIT_PREDICTED
    data = json.loads(result.stdout)
    assert data["measured"] is False and data["calibration"]["store"] == "results/h100/lean-gemv/gemv10.sqlite"
    assert data["predicted"] and all(row["predicted"] and row["gpu"] == "l4" for row in data["predicted"])
    assert list(tmp_path.iterdir()) == []


def test_predict_needs_no_db(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no results/qbench.sqlite here
    result = CliRunner().invoke(main, ["predict", "--model", "qwen2.5-7b", "--gpu", "l4"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("PREDICTED (not measured): qwen2.5-7b on l4")
    assert "calibrated on the shipped h100-sxm5 measurements (NVIDIA H100 80GB HBM3; store " in result.stdout
    assert "results/h100/lean-gemv/gemv10.sqlite" in result.stdout and "2026-11-27" in result.stdout
    result = CliRunner().invoke(
        main, ["predict", "--gpu", "l4", "--backends", "bf16,torch-int4", "--runtimes", "hf,lean", "--format", "json"]
    )
    data = json.loads(result.stdout)
    assert len(data["predicted"]) == 8 and data["calibration"]["card"] == "h100-sxm5"
    assert list(tmp_path.iterdir()) == []
    # --db as before: a store that does not exist is one line
    result = CliRunner().invoke(main, ["predict", "--gpu", "l4", "--db", "missing.sqlite"])
    assert result.exit_code == 2 and "--db missing.sqlite does not exist" in result.output


def test_the_shipped_calibration_is_what_the_generator_makes_from_the_committed_store():
    spec = importlib.util.spec_from_file_location("calibration_tool", ROOT / "tools" / "calibration.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    shipped = ROOT / "qbench" / "data" / qbench.analysis.predict.SHIPPED_CALIBRATION
    assert shipped.read_text() == tool.build(), "run: python tools/calibration.py"
    document = json.loads(shipped.read_text())
    assert document["store"] == qbench.analysis.predict.SHIPPED_STORE and document["card"] == "h100-sxm5"
    cells = {(c["backend"], c["runtime"]) for c in document["calibrations"]}
    for backend in ("bf16", "torch-int4", "awq-marlin", "gptq-exllamav2", "bnb-nf4"):
        assert {(backend, "hf"), (backend, "lean")} <= cells
    # it installs with the package
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert "data/*.json" in setup["options.package_data"]["qbench"]
    calibrations, source = qbench.analysis.predict.shipped_calibration()
    assert len(calibrations) == len(document["calibrations"]) and source["date"] == "2026-11-27"


def test_a_7b_model_on_a_cpu_warns_with_its_estimate_before_the_first_session(tmp_path, monkeypatch):
    for module in (qbench.compare, qbench.plan, qbench.execute.local):
        monkeypatch.setattr(module, "probe_device", lambda: CPU)
    monkeypatch.setattr(qbench.analysis.predict, "cpu_probe", lambda: (10.0, 100.0), raising=False)  # GB/s, GFLOP/s

    def first_session(*args, **kwargs):
        click.echo("THE FIRST SESSION STARTS", err=True)
        raise UserError("stopped by the test before any session")

    monkeypatch.setattr(qbench.execute.local, "run_compare", first_session)
    db = tmp_path / "q.sqlite"
    result = CliRunner().invoke(
        main, ["compare", "--model", "qwen2.5-7b", "--backends", "bf16", "--db", str(db), "--timeout", "1"]
    )
    assert result.exit_code == 2, result.output
    warning = result.output.index("warning: qwen2.5-7b on a CPU: 1 session(s), about ")
    assert warning < result.output.index("THE FIRST SESSION STARTS")
    # the stated formula: (5 + 30) steps x bytes/step / 10 GB/s + 2 prefills x 2 x parameters x 512 / 100 GFLOP/s
    counted = step_bytes(load_model_spec("qwen2.5-7b"), 512)
    seconds = 35 * counted.total / 10e9 + 2 * 2 * (counted.linear_weights + counted.lm_head) / 2 * 512 / 100e9
    assert f"about {seconds / 60:.0f} min by estimate" in result.output
    assert "qbench compare --model qwen2.5-7b --gpu h100-sxm5" in result.output  # the quicker answer
    # a small model runs without it
    small = CliRunner().invoke(main, ["compare", "--backends", "bf16", "--db", str(db)])
    assert "THE FIRST SESSION STARTS" in small.output and "on a CPU:" not in small.output
