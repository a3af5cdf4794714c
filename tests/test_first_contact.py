"""What a newcomer meets first (issue 24): a recommendation without an interval says so in its
headline, every table fits a terminal, the plot names runtimes, device reasons come before package
advice, and the README's plugin example runs as written."""

import json
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from qbench.cli import main

ROOT = Path(__file__).resolve().parent.parent
H100 = ROOT / "results" / "h100"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ---- 2: a recommendation no interval decides carries its caveat in the headline ------------------


def test_a_one_session_recommendation_is_provisional_in_its_headline(tmp_path):
    from test_deploy_report import add_cell

    from qbench.store import Store

    store = Store(tmp_path / "one.sqlite")
    run = store.new_run("qbench compare (one session per cell)", {})
    add_cell(store, run, "bf16", "hf", [10.0], [30.0], 15000, 14.26)
    add_cell(store, run, "torch-int4", "hf", [6.0], [12.0], 5900, 4.68)
    store.close()
    result = invoke("report", "--db", "one.sqlite", "--out", "r.md", "--budget-ms", "33.3")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "r.md").read_text()
    headlines = [line for line in text.splitlines() if "deploy torch-int4" in line and "Within" in line]
    assert headlines, text
    for line in headlines:
        assert "PROVISIONAL" in line and "no interval" in line and "--sessions 3" in line


def test_a_decided_recommendation_has_no_caveat(tmp_path):
    from test_deploy_report import make_store

    make_store(tmp_path / "r.sqlite")
    assert invoke("report", "--db", "r.sqlite", "--out", "r.md", "--budget-ms", "9").exit_code == 0
    assert "PROVISIONAL" not in (tmp_path / "r.md").read_text()


# ---- 4: the plot draws one labelled series per runtime and backend -------------------------------


def test_plot_of_the_runtimes_store_names_each_runtime(tmp_path):
    pytest.importorskip("matplotlib")
    store = H100 / "runtimes" / "runtimes.sqlite"
    result = invoke("plot", "--db", store, "--run", "all", "--out", "runtimes.svg")
    assert result.exit_code == 0, result.output
    svg = (tmp_path / "runtimes.svg").read_text()
    # matplotlib writes each text as a comment beside its glyphs
    assert "bf16 under hf" in svg and "bf16 under lean" in svg
    assert "under hf, lean" in svg  # the title names the runtimes drawn


def test_the_readme_plot_command_works(tmp_path):
    pytest.importorskip("matplotlib")
    readme = (ROOT / "README.md").read_text()
    (line,) = [line for line in readme.splitlines() if line.startswith("qbench plot ")]
    args = line.split("#")[0].split()[2:]
    args = [str(ROOT / a) if a.startswith("results/") else a for a in args]
    result = invoke("plot", *args)
    assert result.exit_code == 0, result.output


# ---- 5: a backend this device cannot run says so before any package advice -----------------------


def test_device_reason_comes_before_package_advice(monkeypatch):
    import importlib.util

    from qbench.backend import DeviceInfo
    from qbench.registry import backend_names, load_backend

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name != "torch" else real(name, *a))
    cpu = DeviceInfo(kind="cpu", name="cpu")
    old = DeviceInfo(kind="cuda", name="old gpu", capability=(6, 0))
    checked = 0
    for name in backend_names():
        backend = load_backend(name)
        if backend.requires_cuda:
            assert backend.unavailable_reason(cpu).startswith("needs a CUDA GPU"), name
            checked += 1
        if backend.min_capability:
            assert backend.unavailable_reason(old).startswith("needs compute capability"), name
    assert checked >= 3
    result = invoke("backends")
    awq = [line for line in result.output.splitlines() if line.startswith("awq-marlin")]
    assert awq and "needs a CUDA GPU" in awq[0] and "pip install" not in awq[0]


# ---- 3: every table command fits 120 columns by default --------------------------------------------

WIDTH = 120
STORES = sorted(H100.rglob("*.sqlite"))


def _widest(result) -> int:
    assert result.exit_code == 0, result.output
    return max((len(line) for line in result.stdout.splitlines()), default=0)


def test_every_table_command_fits_120_columns_on_the_committed_stores():
    assert len(STORES) >= 10
    runner = CliRunner()
    too_wide = {}

    def check(*args):
        result = runner.invoke(main, [str(a) for a in args])
        if result.exit_code == 2:  # a view the store has nothing for (no kernels, no bf16 rows)
            return
        if _widest(result) > WIDTH:
            too_wide[" ".join(map(str, args))] = _widest(result)

    for command in (["models"], ["gpus"], ["backends"], ["cache"]):
        check(*command)
    check("predict", "--model", "qwen2.5-7b", "--gpu", "l4", "--db", H100 / "runtimes" / "runtimes.sqlite")
    for store in STORES:
        for view in ("compare", "kernels", "sessions", "replication"):
            check("export", "--db", store, "--run", "all", "--format", "table", "--view", view)
    assert not too_wide, too_wide


def test_wide_keeps_every_column_unwrapped():
    narrow = invoke("backends")
    wide = invoke("backends", "--wide")
    assert _widest(narrow) <= WIDTH < _widest(wide)
    assert len(wide.stdout.splitlines()) < len(narrow.stdout.splitlines())


def test_the_compact_compare_table_keeps_expected_x_and_sessions():
    store = H100 / "lean-gemv" / "gemv10.sqlite"
    result = invoke("export", "--db", store, "--run", "all", "--format", "table")
    header = "\n".join(line for line in result.stdout.splitlines() if line.startswith("backend"))
    assert "runtime" in header and "expected" in header and "sessions" in header
    assert _widest(result) <= WIDTH


# ---- 8: fixed decimals per column ---------------------------------------------------------------------


def test_numbers_keep_their_decimals():
    from qbench.render.tables import layout

    text = layout([["a", "85.0", 8.0, "1"], ["b", "7.25", 80.5, "28"]], ["name", "pct", "GiB", "count"], "simple")
    assert "85.00" in text and "8.0 " in text + " " and " 1" in text and "28.0" not in text


# ---- 6: the README's plugin example runs as written -------------------------------------------------


def _readme_section(title: str) -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"\n## {title}\n")
    return readme[start : readme.index("\n## ", start + 1)]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_the_readme_plugin_example_runs_as_written(tmp_path, monkeypatch):
    from conftest import install_plugin

    section = _readme_section("Adding a backend")
    linear_format, whole_runtime = _blocks(section, "python")
    exec(compile(whole_runtime, "README whole runtime", "exec"), {})  # it defines what it shows
    (ini,) = _blocks(section, "ini")
    entries = dict(re.findall(r"^\s+([\w.-]+) = (mypkg\.backend:\w+)$", ini, flags=re.M))
    assert entries == {"my-int8": "mypkg.backend:MyBackend"}
    site = tmp_path / "site"
    install_plugin(site, monkeypatch, "mypkg", "mypkg", "", {})
    (site / "mypkg" / "backend.py").write_text(linear_format)
    entry_points = site / "mypkg-0.1.dist-info" / "entry_points.txt"
    entry_points.write_text("[qbench.backends]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))
    monkeypatch.delitem(sys.modules, "mypkg.backend", raising=False)

    listed = invoke("backends", "--format", "json")
    assert any(b["name"] == "my-int8" and b["available"] for b in json.loads(listed.stdout))
    fast = ["--model", "tiny", "--ctx", "32", "--warmup", "1", "--steps", "3", "--db", "r.sqlite"]
    result = invoke("compare", *fast, "--backends", "bf16,my-int8", "--runtimes", "hf,lean", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = [r for r in json.loads(result.stdout) if r["backend"] == "my-int8"]
    assert {r["runtime"] for r in rows} == {"hf", "lean"} and all(r["status"] == "ok" for r in rows), rows


def test_a_plugin_joining_a_default_compare_is_announced(plugin_dist):
    from qbench.compare import CompareConfig, plan

    the_plan = plan(CompareConfig(model="tiny", ctx=(32,), warmup=1, steps=3))
    assert "fake-ok" in the_plan.backends
    (note,) = [n for n in the_plan.notes if "plugin" in n]
    assert "fake-ok" in note and "--backends" in note and "bf16" not in note
    named = plan(CompareConfig(model="tiny", backends=("bf16", "fake-ok"), ctx=(32,), warmup=1, steps=3))
    assert not [n for n in named.notes if "plugin" in n]


# ---- 7: a session shows its phase while it runs ---------------------------------------------------------


def test_a_session_shows_its_phases_while_it_runs():
    fast = ["--model", "tiny", "--ctx", "32", "--warmup", "1", "--steps", "3", "--db", "r.sqlite"]
    result = invoke("compare", *fast, "--backends", "bf16", "--graphs", "off")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    relayed = [line for line in lines if line.startswith("  ") and "bf16" in line]
    for what in ("load: tiny with bf16", "gate: reference logits", "block 1 of 1: timing eager"):
        assert any(what in line for line in relayed), (what, lines)


# ---- 8: small things ----------------------------------------------------------------------------------


def test_old_block_size_labels_read_as_groups():
    from qbench.report import stored_label

    assert stored_label("bnb-nf4 (b64)") == "bnb-nf4 (g64)"
    assert stored_label("awq-marlin (g128)") == "awq-marlin (g128)" and stored_label("bf16") == "bf16"


def test_latex_export_has_no_markdown_backticks():
    store = H100 / "lean-gemv" / "gemv10.sqlite"
    result = invoke("export", "--db", store, "--run", "all", "--format", "latex")
    assert result.exit_code == 0 and "`" not in result.stdout and r"\texttt{qbench compare" in result.stdout


def test_notes_every_backend_of_a_runtime_shares_are_said_once():
    store = H100 / "llamacpp" / "runtimes11.sqlite"
    result = invoke("export", "--db", store, "--run", "all", "--format", "table")
    notes = [line for line in result.stdout.splitlines() if line.startswith("- ")]
    assert sum("KV cache F16" in line for line in notes) == 1
    assert len(notes) == len(set(notes)) and len(notes) <= 8, notes


def test_kernel_counts_are_whole(tmp_path):
    from test_deploy_report import add_cell

    from qbench.store import Store

    store = Store(tmp_path / "k.sqlite")
    run = store.new_run("qbench compare (two sessions: a median of two counts)", {})
    add_cell(store, run, "bf16", "hf", [10.0, 10.2], [30.0, 30.2], 15000, 14.26)
    store.close()
    result = invoke("export", "--db", "k.sqlite", "--view", "kernels", "--format", "json")
    calls = [row["calls"] for row in json.loads(result.stdout)]
    assert calls and all(isinstance(c, int) for c in calls), calls
