"""`qbench report`: the deployment report from a store of synthetic session rows (no GPU, no run):
which cell it recommends per budget, that incorrect cells are never recommended, that its figures
are export's, the HTML and Markdown it writes, bad input, and (where chromium is) a real browser."""

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from qbench.cli import main
from qbench.deploy_report import Budget, Cell, ReportConfig, build, pareto_svg
from qbench.settings import DEFAULT_MEASURE_SETTINGS
from qbench.store import Store

GPU = "h100-sxm5"  # a spec with a datasheet bandwidth, so rows have a % of floor
STEP_SPREAD = (0.99, 1.0, 1.01)  # each session's steps around its median


def _config(backend: str, runtime: str, weights: str, index: int) -> dict:
    return {
        "model": "qwen2.5-7b",
        "backend": backend,
        "runtime": runtime,
        "ctx": 2048,
        "device": "cuda",
        "graphs": [False, True],
        "warmup": 5,
        "steps": 30,
        "weights": weights,
        "group_size": 128,
        "seed": 0,
        "session_index": index,
        "rounds": 1,
        "cpu": "off",
    }


def _block(graphs: bool, median_ms: float, status: str = "ok", reason: str = "") -> dict:
    steps = [median_ms * f for f in STEP_SPREAD] * 10
    probe = {"launch_us": 5.0, "op_us": 9.0, "cpu_ms": 1.0}
    return {
        "graphs": graphs,
        "status": status,
        "reason": reason,
        "wall_ms": steps,
        "event_ms": steps,
        "host": {"before": probe, "after": {**probe, "launch_us": 5.5}},
    }


def add_cell(store: Store, run: str, backend: str, runtime: str, graph_ms: list[float], eager_ms: list[float],
             memory_mib: float, gb: float, weights: str = "synthetic", status: str = "ok", reason: str = "",
             perplexity: float | None = None, switches: dict | None = None) -> None:  # fmt: skip
    """One cell: a session per graph median (with its eager median), as a worker would store it;
    `switches`: measuring switches it ran under, beside the defaults (stored only where given)."""
    for index, (graph, eager) in enumerate(zip(graph_ms, eager_ms, strict=True)):
        config = _config(backend, runtime, weights, index)
        if switches is not None:
            config["measure_settings"] = {**DEFAULT_MEASURE_SETTINGS, **switches}
        cell = {k: v for k, v in config.items() if k != "session_index"}
        cell_hash = hashlib.sha256(json.dumps(cell, sort_keys=True).encode()).hexdigest()[:16]
        block_status = "incorrect" if status == "incorrect" else "ok"
        result = {
            "status": status,
            "reason": reason,
            "label": backend,
            "runtime": runtime,
            "baseline": backend == "bf16",
            "bytes": {"total": int(gb * 1e9)},
            "provenance": {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "copy_bandwidth_gbps": 3000.0},
            "host": {"cpu_model": "Test CPU"},
            "blocks": [_block(False, eager, block_status, reason), _block(True, graph, block_status, reason)],
            "peak_memory_mib": memory_mib,
            "gpu_memory_mib": memory_mib,
            "gpu_memory_source": "NVML per process (CUDA context included)",
            "step_kernels": [
                {"name": f"{backend}_gemv_kernel", "count": 196, "gpu_us": graph * 600},
                {"name": "flash_attention", "count": 28, "gpu_us": graph * 200},
            ],
            "step_gpu_us": graph * 1000,
        }
        if perplexity is not None:
            result["perplexity"] = {"value": perplexity, "tokens": 500}
        store.add_session(run, cell_hash, config, GPU, result)


def make_store(path: Path) -> str:
    """Four correct cells and one incorrect one that would win every budget if it were eligible."""
    store = Store(path)
    run = store.new_run("qbench compare --model qwen2.5-7b --backends ... (synthetic rows for the tests)", {})
    add_cell(store, run, "bf16", "hf", [10.0, 10.1, 9.9], [30.0, 31.0, 29.0], 15000, 14.26)
    add_cell(store, run, "torch-int4", "lean", [6.0, 6.1, 5.9], [12.0, 12.2, 11.8], 5900, 4.68)
    add_cell(store, run, "bnb-nf4", "hf", [8.0, 8.1, 7.9], [29.0, 30.0, 28.0], 5800, 4.58)
    add_cell(store, run, "gptq-exllamav2", "hf", [4.0, 4.05, 3.95], [20.0, 20.5, 19.5], 9000, 4.6)
    add_cell(store, run, "awq-marlin", "hf", [3.0, 3.0, 3.0], [3.0, 3.0, 3.0], 5000, 4.6,
             status="incorrect", reason="logit relative error 0.9 > 0.25")  # fmt: skip
    store.close()
    return run


def invoke(*args):
    return CliRunner().invoke(main, ["report", *args])


def chosen(report, budget_text: str) -> Cell | None:
    (group,) = report.groups
    return next(r.chosen for r in group.recommendations if r.budget.text() == budget_text)


def test_recommendations_follow_the_stated_rules(tmp_path):
    make_store(tmp_path / "r.sqlite")
    budgets = (Budget("ms", 9), Budget("ms", 5), Budget("hz", 100), Budget("mib", 10000), Budget("mib", 6000),
               Budget("mib", 5850))  # fmt: skip
    report = build(ReportConfig(dbs=("r.sqlite",), out=Path("r.html"), budgets=budgets))
    pick = {
        b.text(): (chosen(report, b.text()).row["backend"], chosen(report, b.text()).row["graphs"]) for b in budgets
    }
    # 9 ms: gptq (4 ms, 9000 MiB) is the fastest, and no interval ties torch-int4 (6 ms, 5900 MiB) with it:
    # memory only breaks ties the intervals cannot
    assert pick[Budget("ms", 9).text()] == ("gptq-exllamav2", "on")
    assert pick[Budget("hz", 100).text()] == ("gptq-exllamav2", "on")  # 100 Hz = 10 ms
    assert pick[Budget("ms", 5).text()] == ("gptq-exllamav2", "on")  # the only one within 5 ms
    assert pick[Budget("mib", 10000).text()] == ("gptq-exllamav2", "on")  # the fastest that fits
    assert pick[Budget("mib", 6000).text()] == ("torch-int4", "on")
    assert pick[Budget("mib", 5850).text()] == ("bnb-nf4", "on")
    # The incorrect cell (3 ms, 5000 MiB) would have won every one of them: never eligible, never chosen
    cells = report.groups[0].cells
    assert not any(c.eligible for c in cells if c.row["backend"] == "awq-marlin")
    assert all(r.chosen.row["backend"] != "awq-marlin" for r in report.groups[0].recommendations)
    # Pareto-optimal: torch-int4 graphs on is neither slower nor larger than any correct cell on both
    pareto = {(c.row["backend"], c.row["graphs"]) for c in cells if c.pareto}
    assert pareto == {("gptq-exllamav2", "on"), ("torch-int4", "on"), ("bnb-nf4", "on")}


def test_default_budgets_and_the_report_in_both_formats(tmp_path):
    make_store(tmp_path / "r.sqlite")
    before = {path.name: path.stat().st_mtime_ns for path in tmp_path.iterdir()}
    for out in ("report.html", "report.md"):
        result = invoke("--db", "r.sqlite", "--out", out)
        assert result.exit_code == 0, result.output
    after = {path.name: path.stat().st_mtime_ns for path in tmp_path.iterdir()}
    assert after == {**before, "report.html": after["report.html"], "report.md": after["report.md"]}  # read only
    page, text = (tmp_path / "report.html").read_text(), (tmp_path / "report.md").read_text()
    # derived budgets: control-loop rates from the first some cell meets (200 Hz: 5 ms, gptq) on
    assert (
        "Within a 200 Hz control loop (5 ms/token), a standard budget taken from the data: deploy gptq-exllamav2"
        in text
    )
    assert "deploy torch-int4 under lean, CUDA graphs on" in text  # 100 Hz and looser: the small memory tier
    for document in (page, text):
        assert "awq-marlin" in document and "logit relative error 0.9" in document  # listed as incorrect
        assert not re.search(r"deploy awq-marlin", document)
        assert "not measured (synthetic weights" in document and "No cell here ran real weights" in document
        assert "flash_attention" in document  # the top cells' kernels
        assert "qbench compare --model qwen2.5-7b" in document  # provenance: the command that made the data
        assert "eager launch us" in document  # graphs A/B beside the host's launch cost
    # HTML: one self-contained document, figure inline, nothing fetched, measured badges
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # one figure per graphs setting: graph replay and eager in separate panels
    assert page.count('<svg xmlns="http://www.w3.org/2000/svg"') == 2 and 'class="pareto"' in page
    assert "graph replay (graphs on)" in page and "eager (graphs off)" in page
    assert not re.search(r"<script|<link|<img|src=|url\(", page)
    assert set(re.findall(r"https?://[^\s\"'<]+", page)) == {"http://www.w3.org/2000/svg"}
    assert page.count('class="badge measured"') >= 5 and 'class="point measured' in page
    # Markdown: the same content, the figure as a table
    assert "<svg" not in text and "Pareto figure, as a table" in text and "**[measured]**" in text


def test_report_figures_are_export_figures(tmp_path):
    """The report recomputes nothing: its ms/step and % floor are export's for the same rows."""
    make_store(tmp_path / "r.sqlite")
    exported = json.loads(CliRunner().invoke(main, ["export", "--db", "r.sqlite", "--format", "json"]).stdout)
    assert invoke("--db", "r.sqlite", "--out", "r.md", "--budget-ms", "9").exit_code == 0
    text = (tmp_path / "r.md").read_text()
    row = next(r for r in exported if r["backend"] == "gptq-exllamav2" and r["graphs"] == "on")
    interval = row["ms_interval"]
    assert f"{row['ms_per_step']:.2f} ms/step (95% CI {interval['low']:.2f}-{interval['high']:.2f}, t-log" in text
    assert f"{row['pct_of_floor_peak']:.0f}% of the memory floor at datasheet bandwidth" in text
    # the floor table's row for bnb-nf4 under hf, graphs on: export's cells
    nf4 = next(r for r in exported if r["backend"] == "bnb-nf4" and r["graphs"] == "on")
    (line,) = [line for line in text.splitlines() if re.match(r"\| A +\| bnb-nf4 +\| hf +\| on ", line)]
    cells = [cell.strip() for cell in line.split("|")]
    for value in (f"{nf4['ms_per_step']:.2f}", f"{nf4['pct_of_floor_peak']:.0f}%", f"{nf4['realisation_pct']:.0f}%"):
        assert value in cells, (value, cells)


def test_real_weights_quality_is_reported_and_gates(tmp_path):
    """With real weights: perplexity against bf16's; a backend past the bound is incorrect, not chosen."""
    store = Store(tmp_path / "q.sqlite")
    run = store.new_run("qbench compare --weights ./ckpt", {})
    add_cell(store, run, "bf16", "hf", [10.0, 10.1, 9.9], [30.0, 31.0, 29.0], 15000, 14.26, "./ckpt", perplexity=10.0)
    add_cell(store, run, "torch-int4", "hf", [6.0, 6.1, 5.9], [20.0, 21.0, 19.0], 5900, 4.68, "./ckpt", perplexity=11.0)
    add_cell(store, run, "bnb-nf4", "hf", [5.0, 5.1, 4.9], [20.0, 21.0, 19.0], 5800, 4.58, "./ckpt", perplexity=20.0)
    store.close()
    assert invoke("--db", "q.sqlite", "--out", "q.md", "--budget-mib", "8000").exit_code == 0
    text = (tmp_path / "q.md").read_text()
    assert "deploy torch-int4 under hf" in text and "deploy bnb-nf4" not in text
    assert "Quality: perplexity 11.00, 1.10x bf16's (bound 1.75x): passed." in text
    assert "perplexity 20.0 > 1.75 x bf16's 10.0" in text  # why bnb-nf4 is not eligible
    assert "No cell here ran real weights" not in text


def test_predicted_points_are_drawn_apart():
    row = {"label": "bf16", "runtime": "hf", "graphs": "on", "ms_per_step": 9.0, "ms_interval": None,
           "status": "ok", "flags": [], "weights": "synthetic", "sessions": "1/1"}  # fmt: skip
    measured = Cell("A", row, memory_mib=15000, memory_basis="nvml", pareto=True)
    predicted = Cell("A", {**row, "ms_per_step": 7.0}, memory_mib=15000, memory_basis="nvml", predicted=True)
    svg = pareto_svg([measured, predicted], "figure", "test")
    assert svg.count('class="point measured') == 1 and svg.count('class="point predicted') == 1
    assert 'stroke-dasharray="2 2"/>' in svg.split('class="point predicted')[1].split("</g>")[0]


def test_several_stores_and_a_run_of_one(tmp_path):
    make_store(tmp_path / "a.sqlite")
    store = Store(tmp_path / "b.sqlite")
    run_b = store.new_run("qbench compare (store b)", {})
    add_cell(store, run_b, "bf16", "lean", [8.0, 8.1, 7.9], [9.0, 9.1, 8.9], 15050, 14.26)
    store.close()
    assert invoke("--db", "a.sqlite", "--db", "b.sqlite", "--out", "ab.md", "--budget-mib", "20000").exit_code == 0
    text = (tmp_path / "ab.md").read_text()
    assert "| A       | a.sqlite" in text and "| B       | b.sqlite" in text
    assert invoke("--db", "a.sqlite", "--db", "b.sqlite", "--run", run_b, "--out", "b.md").exit_code == 0
    only_b = (tmp_path / "b.md").read_text()
    assert "deploy bf16 under lean" in only_b and "a.sqlite" not in only_b


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    make_store(tmp_path / "r.sqlite")
    Store(tmp_path / "empty.sqlite").close()  # a qbench store with no runs
    (tmp_path / "zero.sqlite").write_bytes(b"")
    cases = [
        (["--db", "missing.sqlite", "--out", "x.html"], "no results database at missing.sqlite"),
        (["--db", "r.sqlite", "--run", "nope", "--out", "x.html"], "no run 'nope' in r.sqlite"),
        (["--db", "r.sqlite", "--out", "x.pdf"], "--out x.pdf has '.pdf'"),
        (["--db", "r.sqlite", "--out", "x"], "has no suffix"),
        (["--db", "empty.sqlite", "--out", "x.html"], "empty.sqlite holds no runs"),
        (["--db", "zero.sqlite", "--out", "x.html"], "zero.sqlite is empty"),
        (["--db", "r.sqlite", "--out", "x.html", "--budget-ms", "2"], "no correct cell meets 2 ms/token"),
        (["--db", "r.sqlite", "--out", "x.html", "--budget-mib", "100"], "no correct cell fits 100 MiB"),
        (["--db", "r.sqlite", "--out", "x.html", "--budget-hz", "fast"], "--budget-hz takes numbers"),
        (["--db", "r.sqlite", "--out", "x.html", "--budget-ms", "-3"], "--budget-ms must be positive"),
    ]
    for args, message in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("qbench: error: ") and ";" in lines[0], (args, lines)
        assert not (tmp_path / "x.html").exists()


# ---- a real browser -------------------------------------------------------------------------

CONSOLE_ERROR = re.compile(r"CONSOLE.*(Uncaught|error)|:ERROR:CONSOLE", re.IGNORECASE)


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("QBENCH_REQUIRE_BROWSER"):
            pytest.fail("QBENCH_REQUIRE_BROWSER is set but no chromium (or chromium-browser) is on PATH")
        pytest.skip("no chromium on PATH (set QBENCH_REQUIRE_BROWSER=1 to make this a failure)")
    return found


def _render(browser: str, page: Path, profile: Path) -> tuple[str, str]:
    """The DOM after the page loaded, and the browser's log (console messages included)."""
    command = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
               f"--user-data-dir={profile}", "--virtual-time-budget=2000", "--dump-dom", page.as_uri()]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def test_the_html_report_renders_in_chromium(tmp_path):
    browser = _chromium()
    make_store(tmp_path / "r.sqlite")
    assert invoke("--db", "r.sqlite", "--out", "report.html").exit_code == 0
    dom, log = _render(browser, tmp_path / "report.html", tmp_path / "profile")
    assert re.search(r'<svg[^>]*class="pareto"', dom) and dom.count('class="point measured') >= 4
    assert "deploy torch-int4 under lean, CUDA graphs on" in dom
    errors = [line for line in log.splitlines() if CONSOLE_ERROR.search(line)]
    assert not errors, errors
    # The check above can fail: a page with a script error is caught by the same reading of the log.
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><script>undefinedFunction()</script></body></html>")
    _, broken_log = _render(browser, broken, tmp_path / "profile-broken")
    assert any(CONSOLE_ERROR.search(line) for line in broken_log.splitlines()), broken_log[-2000:]


def test_a_cell_under_other_switches_is_recommended_with_them(tmp_path):
    """A store of `qbench compare --vary QBENCH_LEAN_FOLD=off,on`: what wins ran folded, and the answer
    says so (lean at its defaults is not what was timed)."""
    store = Store(tmp_path / "s.sqlite")
    run = store.new_run("qbench compare --vary QBENCH_LEAN_FOLD=off,on (synthetic rows for the tests)", {})
    add_cell(store, run, "bf16", "lean", [10.0, 10.1, 9.9], [30.0, 31.0, 29.0], 15000, 14.26, switches={})
    add_cell(store, run, "bf16", "lean", [8.0, 8.1, 7.9], [29.0, 30.0, 28.0], 15000, 14.26,
             switches={"QBENCH_LEAN_FOLD": "on"})  # fmt: skip
    store.close()
    result = invoke("--db", "s.sqlite", "--out", "s.md", "--budget-ms", "9")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "s.md").read_text()
    assert "deploy bf16 under lean (QBENCH_LEAN_FOLD=on), CUDA graphs on" in text
    assert re.search(r"\| bf16 +\| lean \(QBENCH_LEAN_FOLD=on\) +\| on +\| 8\.00 ", text)  # the answer at a glance
    assert "bf16 · lean · graphs on" in text and "under lean," not in text  # the default cell, named plainly
