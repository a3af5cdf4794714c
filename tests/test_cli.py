"""The command line through click's CliRunner, on the CPU."""

import csv
import io
import json

import pytest
from click.testing import CliRunner

from qbench.cli import main

FAST = ["--model", "tiny", "--ctx", "32", "--warmup", "1", "--steps", "3", "--db", "r.sqlite"]


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_floor_prints_the_bytes_and_the_floor():
    result = invoke("floor", "--model", "qwen2.5-7b", "--gpu", "l4", "--ctx", "2048")
    assert result.exit_code == 0
    assert "14.141" in result.output and "14.259" in result.output
    data = json.loads(invoke("floor", "--model", "qwen2.5-7b", "--gpu", "l4", "--format", "json").stdout)
    assert data[0]["total"] == 14_258_685_952 and data[0]["floor_ms"] == 14_258_685_952 / 300e9 * 1e3


def test_listings_in_table_and_json():
    assert "qwen2.5-7b" in invoke("models").output
    gpus = json.loads(invoke("gpus", "--format", "json").stdout)
    assert {g["name"] for g in gpus} >= {"h100-sxm5", "l4", "jetson-agx-orin"}


def test_backends_lists_every_backend_with_a_reason_when_unavailable():
    data = json.loads(invoke("backends", "--format", "json").stdout)
    by_name = {d["name"]: d for d in data}
    assert set(by_name) >= {"bf16", "bnb-nf4", "awq-marlin", "gptq-exllamav2", "torch-int4"}
    assert by_name["bf16"]["available"]
    assert by_name["bf16"]["runtimes"] == "hf,lean"  # a linear format runs under both linear runtimes
    for cuda_only in ("awq-marlin", "gptq-exllamav2"):
        assert not by_name[cuda_only]["available"]
        reason = by_name[cuda_only]["why_not"]
        assert "needs a CUDA GPU" in reason or "pip install 'qbench-decode[" in reason


def test_user_errors_are_one_line_and_exit_2():
    cases = [
        (["compare", "--model", "qwen2.5-7", "--db", "r.sqlite"], "did you mean qwen2.5-7b"),
        # (`--gpu l4` on a machine without one answers with a PREDICTED table and exit 3: test_headline.py)
        (["compare", "--model", "tiny", "--gpu", "h100-sxm9", "--db", "r.sqlite"], "h100-sxm9"),
        (["compare", "--model", "tiny", "--backends", "bf61", "--db", "r.sqlite"], "did you mean bf16"),
        (
            ["compare", "--model", "tiny", "--graphs", "on", "--backends", "bf16", "--db", "r.sqlite"],
            "needs a CUDA GPU",
        ),
        (["compare", "--model", "tiny", "--group-size", "100"], "--group-size must be"),
        (["export", "--db", "missing.sqlite"], "no results database"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_compare_stores_and_exports(tmp_path):
    result = invoke("compare", *FAST, "--backends", "bf16,torch-int4", "--sessions", "2", "--format", "json")
    assert result.exit_code == 0
    rows = {r["backend"]: r for r in json.loads(result.stdout)}
    assert rows["bf16"]["status"] == "ok" and rows["bf16"]["sessions"] == "2/2"
    assert rows["torch-int4"]["expected_reduction"] > 1
    assert rows["torch-int4"]["realised_speedup"] > 0 and rows["bf16"]["ms_interval"]["method"] == "t-log"
    for fmt in ("md", "csv", "json", "latex", "html"):
        exported = invoke("export", "--db", "r.sqlite", "--format", fmt, "--out", f"out.{fmt}")
        assert exported.exit_code == 0
        assert "torch-int4" in (tmp_path / f"out.{fmt}").read_text()
    latex, page = (tmp_path / "out.latex").read_text(), (tmp_path / "out.html").read_text()
    assert "\\begin{tabular}" in latex and "95\\% CI" in latex and "bca-bootstrap at >= 10" in latex
    assert "<table>" in page and "bca-bootstrap at &gt;= 10" in page
    # a whole HTML document, the commands as code, no backticks left
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>") and "<code>qbench" in page
    assert "`" not in page
    # CSV: numeric interval bounds, session counts, percentages 0-100
    exported = list(csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text())))
    bf16 = next(r for r in exported if r["backend"] == "bf16")
    low, high, ms = float(bf16["ms_low"]), float(bf16["ms_high"]), float(bf16["ms_per_step"])
    assert low <= ms <= high and bf16["ms_interval_method"] == "t-log"
    assert (bf16["sessions_ok"], bf16["sessions_total"]) == ("2", "2") and "ms_interval" not in bf16
    assert float(bf16["realisation_pct"]) == pytest.approx(100)
    # the terminal table fits 120 columns and leaves out empty ones; --wide shows every filled column
    table = invoke("export", "--db", "r.sqlite", "--format", "table").stdout
    wide = invoke("export", "--db", "r.sqlite", "--format", "table", "--wide").stdout
    assert max(len(line) for line in table.splitlines()) <= 120
    header = next(line for line in table.splitlines() if line.startswith("backend"))
    assert "floor ms (meas.)" not in header and "launch us" in wide and "launch us" not in header
    wide_header = next(line for line in wide.splitlines() if line.startswith("backend"))
    assert "peak MiB" not in wide_header and "GPU MiB" not in wide_header  # empty in every row on a CPU
    replication = invoke("export", "--db", "r.sqlite", "--view", "replication", "--format", "csv")
    header, row = replication.stdout.strip().splitlines()  # one (model, ctx) cell, from its bf16 row only
    assert header.startswith("model,runtime,ctx,floor ms,eager ms") and row.startswith("tiny,hf,32,")


def test_a_third_party_backend_is_listed_and_run(plugin_dist):
    listed = json.loads(invoke("backends", "--format", "json").stdout)
    assert "fake-ok" in {d["name"] for d in listed}
    result = invoke("compare", *FAST, "--backends", "bf16,fake-ok,fake-segv", "--format", "json")
    assert result.exit_code == 0
    rows = {r["backend"]: r for r in json.loads(result.stdout)}
    assert rows["fake-ok"]["status"] == "ok" and rows["fake-ok"]["ms_per_step"] > 0
    assert rows["bf16"]["status"] == "ok"  # survived its neighbour's crash
    assert rows["fake-segv"]["status"] == "failed" and "SIGSEGV" in rows["fake-segv"]["reason"]


def test_bundle_plans_platform_downloads_and_falls_back_to_sdists(tmp_path, monkeypatch):
    import subprocess

    from qbench import bundle

    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        only_binary = "--only-binary=:all:" in command
        failed = command[-1 if only_binary else -2] == "gptqmodel" and only_binary
        return subprocess.CompletedProcess(command, 1 if failed else 0, "", "no matching distribution")

    monkeypatch.setattr(bundle.subprocess, "run", fake_run)
    result = CliRunner().invoke(
        main,
        [
            "bundle",
            str(tmp_path / "wheels"),
            "--backends",
            "awq-marlin,bnb-nf4",
            "--python",
            "3.12",
            "--platform",
            "manylinux_2_28_x86_64",
        ],
    )
    assert result.exit_code == 0, result.output
    requested = [c[-1] if "--no-deps" not in c else c[-2] for c in calls]
    assert "gptqmodel" in requested and "bitsandbytes" in requested and "torch" not in requested
    first = calls[0]
    assert first[first.index("--python-version") + 1] == "3.12" and "manylinux_2_28_x86_64" in first
    assert any("--no-deps" in c and c[-2] == "gptqmodel" for c in calls)  # the sdist fallback
    assert "gptqmodel has no wheel" in result.output


def test_sweep_over_models_and_contexts_with_interleaved_rounds():
    result = invoke(
        "compare",
        "--model",
        "tiny,smollm2-135m",
        "--ctx",
        "16,32",
        "--backends",
        "bf16",
        "--warmup",
        "1",
        "--steps",
        "2",
        "--rounds",
        "2",
        "--db",
        "r.sqlite",
        "--format",
        "json",
    )
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert {(r["model"], r["ctx"]) for r in rows} == {(m, c) for m in ("tiny", "smollm2-135m") for c in (16, 32)}
    assert all(r["status"] == "ok" for r in rows)


def test_replicate_needs_a_gpu():
    result = CliRunner().invoke(main, ["replicate", "--db", "r.sqlite"])
    assert result.exit_code == 2 and "needs a CUDA GPU" in result.output
