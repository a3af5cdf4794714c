"""Names are data in every format: a model path, a plugin's label, notes, kernel names and a failure's
reason that hold HTML, Markdown table syntax, line breaks, a spreadsheet formula, terminal escape
sequences and LaTeX's special characters come out of export (every view and format), the deployment
report, predict, the list commands, the error line and the progress lines as text, never as markup,
a formula or a terminal command. JSON keeps them raw (it is data, escaped by JSON itself)."""

import csv
import dataclasses
import hashlib
import inspect
import io
import json
import re
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner
from conftest import install_plugin

from qbench.cli import main
from qbench.render.escape import for_csv, for_terminal
from qbench.store import Store

IMG = "<img src=x onerror=alert(1)>"
LATEX = "$\\_%&#{}"
# Starts like a formula (CSV); a tag (HTML, Markdown); a pipe and a line break (Markdown tables); a
# terminal colour; LaTeX's special characters. No slash: the model column is the path's last part.
MODEL = f"=cmd|' -C calc'!A0 p7{IMG} a|b\nc \x1b[31mred {LATEX}"
LABEL = f"+lbl{IMG}|x\x1b[2J"  # a plugin backend's label
NOTE = f"{IMG} | note\nsecond \x1b]0;pwned\x07 {LATEX}"  # a plugin's runtime note
KERNEL = f"@kern{IMG}|k\x1b[1m{LATEX}"
REASON = f"-boom{IMG}|r\n\x1b[31m{LATEX}"  # a failed session's reason
COMMAND = f"qbench compare --model /models/{MODEL}"
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")  # text output: none but newline and tab


def _config(backend: str, index: int) -> dict:
    return {
        "model": f"/models/{MODEL}", "backend": backend, "runtime": "hf", "ctx": 2048, "device": "cuda",
        "graphs": [False, True], "warmup": 5, "steps": 30, "weights": "synthetic", "group_size": 128,
        "seed": 0, "session_index": index, "rounds": 1, "cpu": "off",
    }  # fmt: skip


def _block(graphs: bool, ms: float) -> dict:
    steps = [ms * f for f in (0.99, 1.0, 1.01)] * 10
    return {"graphs": graphs, "status": "ok", "reason": "", "wall_ms": steps, "event_ms": steps}


def make_store(path) -> None:
    """A bf16 cell and a plugin's cell (label, notes, kernel: all hostile), correct, and a plugin
    cell whose sessions failed with a hostile reason; phases whose timed part is longer than the
    whole (a negative `beyond timed`, a plain negative number in CSV)."""
    store = Store(path)
    run = store.new_run(COMMAND, {})
    for backend, label, graph_ms, status in (
        ("bf16", "bf16", 10.0, "ok"),
        ("adv", LABEL, 4.0, "ok"),
        ("adv-broken", LABEL + "2", 4.0, "failed"),
    ):
        for index in range(2):
            config = _config(backend, index)
            cell = {k: v for k, v in config.items() if k != "session_index"}
            cell_hash = hashlib.sha256(json.dumps(cell, sort_keys=True).encode()).hexdigest()[:16]
            result = {
                "status": status,
                "reason": REASON if status != "ok" else "",
                "label": label,
                "runtime": "hf",
                "baseline": backend == "bf16",
                "runtime_notes": [NOTE] if backend != "bf16" else [],
                "bytes": {"total": int(14e9 if backend == "bf16" else 4.6e9)},
                "provenance": {"device": f"GPU {IMG}", "torch": "2.11.0", "copy_bandwidth_gbps": 3000.0},
                "host": {"cpu_model": f"CPU {NOTE}"},
                "blocks": [_block(False, 3 * graph_ms), _block(True, graph_ms)] if status == "ok" else [],
                "peak_memory_mib": 15000.0 if backend == "bf16" else 5000.0,
                "step_kernels": [{"name": KERNEL, "count": 196, "gpu_us": graph_ms * 600}],
                "step_gpu_us": graph_ms * 1000,
                "phases": {"start_s": 0.5, "timed_s": 3.0, "total_s": 2.0},
            }
            store.add_session(run, cell_hash, config, "h100-sxm5", result)
    store.close()


# ---- reading the outputs back ------------------------------------------------------------------


class _Html(HTMLParser):
    """Every start tag, and each table's rows as lists of cell texts (entities decoded)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self._text: list[str] = []
        self.feed(text)

    def text(self) -> str:
        return "".join(self._text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        self._text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def no_markup(html_text: str) -> _Html:
    page = _Html(html_text)
    assert not {"img", "a", "script", "iframe"} & set(page.tags), page.tags
    return page


def markdown_tables(text: str) -> list[list[str]]:
    """The Markdown's table lines, each table's lines together: every one must have as many cells as
    its header (a `|` in a name is escaped as `\\|`, a line break is never in a cell)."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    for table in tables:
        pipes = [re.sub(r"\\.", "", line).count("|") for line in table]
        assert len(set(pipes)) == 1, table
        assert re.fullmatch(r"\|[-:| ]+\|", table[1]), table  # the header's separator, right after it
    return tables


def check_markdown(text: str, shown: list[str]) -> None:
    """No raw tag outside a code span, tables whole, no control character; rendered (CommonMark +
    tables), no element from the names, and each name in `shown` one cell's or line's text."""
    assert not CONTROL.search(text)
    outside_code = re.sub(r"`[^`\n]+`", "", text)
    assert "<img" not in outside_code and "<" not in re.sub(r"<br>", "", outside_code), outside_code
    markdown_tables(text)
    markdown_it = pytest.importorskip("markdown_it")
    rendered = markdown_it.MarkdownIt("commonmark").enable("table").render(text)
    page = no_markup(rendered)
    shown_text = page.text()
    for name in shown:  # as it is, control characters as escapes, a line break as a space
        assert for_terminal(name) in shown_text, name


def check_terminal(text: str, shown: list[str]) -> None:
    assert not CONTROL.search(text), repr(text[:500])
    for name in shown:  # its first word on one line (a table too wide wraps at spaces), control characters escaped
        first = for_terminal(name)[:12].split(" ")[0]
        assert any(first in line for line in text.splitlines()), name


def check_latex(text: str) -> None:
    assert not CONTROL.search(text)
    bare = re.sub(r"\\.", "", text)  # every escape (\$, \textbackslash, \\ ...) out
    for special in "$%#_^~":
        assert special not in bare, (
            special,
            [line for line in text.splitlines() if special in re.sub(r"\\.", "", line)],
        )
    for tabular in re.findall(r"\\begin\{tabular\}.*?\\end\{tabular\}", text, flags=re.S):
        rows = [line for line in tabular.splitlines() if line.rstrip().endswith("\\\\")]
        columns = {re.sub(r"\\.", "", row).count("&") for row in rows}
        assert len(columns) == 1, rows  # an & in a name never adds a column
        assert "\n\n" not in tabular  # a blank line in a cell ends a paragraph: a LaTeX error
    assert "\\$\\textbackslash{}\\_\\%\\&\\#\\{\\}" in text  # prose (the heading)


def check_csv(text: str) -> list[dict]:
    rows = [row for row in csv.reader(io.StringIO(text)) if row]
    for row in rows:
        for cell in row:
            if cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
                float(cell)  # only a plain number may start so
    return rows


def invoke(*args):
    """The command as in a terminal: click keeps escape sequences (it strips them from a pipe)."""
    return CliRunner().invoke(main, list(args), color=True)


def export(*args):
    return invoke("export", "--db", "r.sqlite", "--run", "all", *args)


# ---- the tests ---------------------------------------------------------------------------------


def test_the_escaping_functions():
    assert for_csv("=cmd|' -C calc'!A0") == "'=cmd|' -C calc'!A0"
    for formula in ("+1+2", "-2+3", "@SUM(A1)", "-", "-x", " =1+1"):
        assert for_csv(formula) == "'" + formula
    assert for_csv("\t=1+1") == "' =1+1" and for_csv("\x1b[31m") == "\\x1b[31m"
    for kept in ("-1", "-1.5", "-2e-3", "+3", "1", "x=y", "", 3, -2.5, None):
        assert for_csv(kept) == kept
    assert for_terminal("a\x1b[31mb\nc\td\u202ee\x9b") == "a\\x1b[31mb c d\\u202ee\\x9b"


def test_export_compare_view_in_every_format(tmp_path):
    make_store(tmp_path / "r.sqlite")
    out = {}
    for fmt in ("md", "csv", "json", "table", "latex", "html"):
        result = export("--format", fmt, "--wide")
        assert result.exit_code == 0, result.output
        out[fmt] = result.stdout
    check_markdown(out["md"], [LABEL, NOTE, MODEL, REASON])
    check_terminal(out["table"], [LABEL, NOTE, MODEL])
    check_latex(out["latex"])
    page = no_markup(out["html"])
    cells = [cell for table in page.tables for row in table for cell in row]
    assert for_terminal(LABEL) in cells and for_terminal(MODEL) in page.text()  # HTML: the names, as text
    assert not CONTROL.search(out["html"])
    rows = check_csv(out["csv"])
    records = list(csv.DictReader(io.StringIO(out["csv"])))
    assert len({len(r) for r in rows}) == 1
    adv = next(r for r in records if r["backend"] == "adv")
    assert adv["model"] == "'" + for_terminal(MODEL) and adv["label"] == "'" + for_terminal(LABEL)
    assert adv["runtime_notes"] == for_terminal(NOTE)  # starts with <: no formula
    broken = next(r for r in records if r["backend"] == "adv-broken")
    assert broken["reason"] == "failed: " + for_terminal(REASON)
    data = {r["backend"]: r for r in json.loads(out["json"])}  # JSON: raw, escaped by JSON itself
    assert data["adv"]["model"] == MODEL and data["adv"]["label"] == LABEL and data["adv"]["runtime_notes"] == [NOTE]


def html_unescape_contains(page: str, text: str) -> bool:
    import html

    return text in html.unescape(page)


@pytest.mark.parametrize("view", ["replication", "kernels", "sessions"])
def test_export_other_views_in_every_format(tmp_path, view):
    make_store(tmp_path / "r.sqlite")
    shown = {"replication": [MODEL], "kernels": [MODEL, KERNEL[:40]], "sessions": [MODEL]}[view]
    for fmt in ("md", "csv", "json", "table", "latex", "html"):
        result = export("--view", view, "--format", fmt)
        assert result.exit_code == 0, (fmt, result.output)
        text = result.stdout
        if fmt == "md":
            check_markdown(text, shown)
        elif fmt == "table":
            check_terminal(text, shown)
        elif fmt == "latex":
            check_latex(text)
        elif fmt == "html":
            no_markup(text)
            assert not CONTROL.search(text)
        elif fmt == "csv":
            rows = check_csv(text)
            if view == "kernels":  # the model's whole path here; the kernel starts with @
                assert any("'" + for_terminal(KERNEL) in row for row in rows)
            else:
                assert any(row[0] == "'" + for_terminal(MODEL) for row in rows)
            if view == "sessions":
                assert any("-1.0" in row for row in rows)  # a plain negative number stays a number
        else:
            assert all(row["model"].endswith(MODEL) for row in json.loads(text))  # raw


def test_deployment_report_in_markdown_and_html(tmp_path):
    make_store(tmp_path / "r.sqlite")
    for out in ("report.md", "report.html"):
        result = invoke("report", "--db", "r.sqlite", "--out", out, "--budget-ms", "50")
        assert result.exit_code == 0, result.output
    text, page = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    assert "deploy +lbl" in text  # the plugin cell is recommended: its name is in the prose
    check_markdown(text, [LABEL, MODEL, COMMAND[:60]])
    assert "<img" not in page and not CONTROL.search(page)
    assert f"deploy {for_terminal(LABEL)} under hf" in no_markup(page).text()


def test_predict_in_table_and_markdown(tmp_path):
    """A checkpoint folder named MODEL (its name is the model's): calibrated on sessions stored for
    it, predicted for it, in every format; and a plugin's strings in the table and notes."""
    from importlib import resources

    from qbench.analysis.predict import predict, render

    folder = tmp_path / MODEL
    folder.mkdir()
    builtin = json.loads(resources.files("qbench").joinpath("data/models/qwen2.5-7b.json").read_text())
    (folder / "config.json").write_text(json.dumps(builtin["config"]))
    store = Store(tmp_path / "p.sqlite")
    run = store.new_run(COMMAND, {})
    for index in range(2):
        config = {**_config("bf16", index), "model": str(folder)}
        blocks = [_block(False, 20.0), _block(True, 6.6)]
        for block in blocks:
            block["host"] = {"before": {"launch_us": 10.0}, "after": {"launch_us": 10.0}}
        result = {
            "status": "ok", "blocks": blocks, "runtime": "hf", "baseline": True, "step_gpu_us": 5500.0,
            "step_kernels": [{"name": "nvjet_sm90_tst_256x8_TNT", "count": 196, "gpu_us": 5000.0}],
            "bytes": {"linear_weights": 12e9, "lm_head": 1e9, "biases": 0, "kv_cache": 1e8, "total": 13.1e9},
        }  # fmt: skip
        store.add_session(run, "cell-1", config, "h100-sxm5", result)
    sessions = store.sessions()
    store.close()
    args = ["predict", "--model", str(folder), "--gpu", "a100-80gb-sxm4", "--db", "p.sqlite"]
    table, md = invoke(*args), invoke(*args, "--format", "md")
    assert table.exit_code == 0 and md.exit_code == 0, table.output + md.output
    check_terminal(table.stdout, [f"PREDICTED (not measured): {MODEL}", MODEL])
    check_markdown(md.stdout, [f"PREDICTED (not measured): {MODEL}", MODEL])
    assert json.loads(invoke(*args, "--format", "json").stdout)["predicted"][0]["model"] == MODEL  # raw
    # a plugin backend's name and note, and a reason it was not predicted
    rows, _ = predict(str(folder), "a100-80gb-sxm4", ["bf16"], ("hf",), (2048,), (True, False), sessions)
    rows = [dataclasses.replace(row, backend=LABEL, note=NOTE) for row in rows]
    skipped = {LABEL: REASON}
    check_markdown(render(rows, skipped, "md"), [LABEL, NOTE, REASON])
    check_terminal(render(rows, skipped, "table"), [LABEL, NOTE, REASON])


PLUGIN = f"""
    from qbench.backends.bf16 import Bf16Backend

    class Adversary(Bf16Backend):
        name = "adv"
        description = {NOTE!r}
        kernel = {KERNEL!r}

    class Broken(Bf16Backend):
        name = "adv-broken"
        def load(self, spec, options):
            raise RuntimeError({REASON!r})
"""


@pytest.fixture
def adversary(tmp_path, monkeypatch):
    import sys

    yield install_plugin(tmp_path / "site", monkeypatch, "qbench-adv", "qbench_adv", PLUGIN,
                         {"adv": "Adversary", "adv-broken": "Broken"})  # fmt: skip
    sys.modules.pop("qbench_adv", None)


def test_list_commands_show_a_plugins_strings_as_text(adversary):
    result = invoke("backends")
    assert result.exit_code == 0, result.output
    check_terminal(result.stdout, [NOTE, KERNEL])
    wide = invoke("backends", "--wide")  # unwrapped
    check_terminal(wide.stdout, [NOTE, KERNEL])
    adv = [line for line in wide.stdout.splitlines() if line.startswith("adv ")]
    assert len(adv) == 1 and for_terminal(NOTE) in adv[0]  # one line: the line break is a space
    data = {d["name"]: d for d in json.loads(invoke("backends", "--format", "json").stdout)}
    assert data["adv"]["description"] == NOTE  # JSON: raw


def test_error_and_progress_lines_show_names_as_text(adversary):
    result = invoke("export", "--db", f"missing{MODEL}.sqlite")
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "qbench: error: no results database" in result.output and not CONTROL.search(result.output)
    # a session that fails with a plugin's message: its progress line, and the table's note
    args = ["compare", "--model", "tiny", "--ctx", "32", "--warmup", "1", "--steps", "2", "--sessions", "1"]
    result = invoke(*args, "--backends", "adv-broken", "--db", "r.sqlite")
    assert result.exit_code == 1, result.output
    assert "failed - RuntimeError: -boom" in result.stderr and "\\x1b[31m" in result.stderr
    assert not CONTROL.search(result.output)


def test_the_default_progress_lines_show_names_as_text(capsys):
    from qbench.compare import run_compare
    from qbench.execute.ray import run_ray_sweep

    for runner in (run_compare, run_ray_sweep):
        inspect.signature(runner).parameters["progress"].default(f"[1/2] {LABEL}: failed - {REASON}")
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and not CONTROL.search(err) and "\\x1b[2J" in err


def test_a_figure_draws_a_name_with_dollars(tmp_path):
    """matplotlib reads `$...$` in a label as mathtext: a model named so stopped `qbench plot`."""
    pytest.importorskip("matplotlib")
    from qbench.analysis import stats
    from qbench.render.plot import replication_figure

    cell = {"model": "a$\\frac{$b" + MODEL, "gpu": "h100-sxm5", "ctx": 2048, "graph_pct_of_floor": 50.0}
    cell.update(eager_pct_of_floor=30.0, graphs_speedup=1.5, graphs_interval=stats.Interval(1.4, 1.6, "t-log"))
    replication_figure([cell], tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
