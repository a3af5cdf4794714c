"""One output layer (issue 22, items 3 and 4c): every table command offers every format of
qbench.render.formats.FORMATS and renders through it, and a format added as one module plus one
FORMATS line is offered and rendered by every one of them. CPU only: committed stores, specs."""

import json
from pathlib import Path

import pytest
import shout_format
from click.testing import CliRunner

from qbench.cli import main
from qbench.render.document import Document, Gap, Heading, Legend, Prose, Table
from qbench.render.formats import FORMATS

ROOT = Path(__file__).resolve().parent.parent
STORE = str(ROOT / "results" / "h100" / "lean-gemv" / "gemv10.sqlite")
TABLE_COMMANDS = ("compare", "replicate", "export", "predict", "floor", "report", "models", "gpus", "backends", "cache")
# one invocation per command that renders on a CPU without measuring (compare and replicate measure;
# their final tables are export's compare and replication views)
RUNS = {
    "export": ["export", "--db", STORE, "--run", "all"],
    "export-kernels": ["export", "--db", STORE, "--run", "all", "--view", "kernels"],
    "export-sessions": ["export", "--db", STORE, "--run", "all", "--view", "sessions"],
    "predict": ["predict", "--model", "qwen2.5-7b", "--gpu", "l4"],
    "floor": ["floor", "--model", "qwen2.5-7b", "--gpu", "l4"],
    "models": ["models"],
    "gpus": ["gpus"],
    "backends": ["backends"],
    "cache": ["cache"],
}


def _format_choices(name: str) -> tuple[str, ...]:
    (option,) = [p for p in main.commands[name].params if p.name == "fmt"]
    return tuple(option.type.choices)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QBENCH_CACHE_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("QBENCH_KERNEL_CACHE", str(tmp_path / "kernels"))


@pytest.mark.parametrize("name", TABLE_COMMANDS)
def test_every_table_command_offers_every_format(name):
    assert _format_choices(name) == tuple(FORMATS)


def _run(args: list[str], fmt: str, tmp_path: Path) -> str:
    result = CliRunner().invoke(main, [*args, "--format", fmt])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("run", list(RUNS))
def test_every_format_renders(run, fmt, tmp_path):
    text = _run(RUNS[run], fmt, tmp_path)
    assert text.strip() or (fmt == "jsonl" and run == "cache")  # no entries: no lines
    if fmt == "json":
        json.loads(text)
    if fmt == "jsonl":
        for line in filter(None, text.splitlines()):
            json.loads(line)
    if fmt == "html":
        assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_report_writes_every_format(fmt, tmp_path):
    out = tmp_path / "report.out"
    result = CliRunner().invoke(main, ["report", "--db", STORE, "--out", str(out), "--format", fmt])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "qwen2.5-7b" in text
    if fmt == "json":
        assert isinstance(json.loads(text), list)


def test_a_new_format_is_one_module_and_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(FORMATS, "shout", shout_format.RENDERER)  # the one line
    for name in TABLE_COMMANDS:
        assert "shout" in _format_choices(name), name
    for run in ("export", "predict", "floor", "models", "gpus"):
        text = _run(RUNS[run], "shout", tmp_path)
        assert text.strip() and text == text.upper(), run
    assert "PREDICTED (NOT MEASURED)" in _run(RUNS["predict"], "shout", tmp_path)
    out = tmp_path / "report.txt"
    result = CliRunner().invoke(main, ["report", "--db", STORE, "--out", str(out), "--format", "shout"])
    assert result.exit_code == 0, result.output
    assert "WHICH BACKEND TO DEPLOY" in out.read_text()
    monkeypatch.delitem(FORMATS, "shout")
    result = CliRunner().invoke(main, ["models", "--format", "shout"])
    assert result.exit_code == 2 and "shout" in result.output  # gone with its line


def test_renderers_escape_names():
    """Escaping is the renderers': a name that is markup in one format is text in each."""
    name = "<b>x|y</b> `z` $1_000 =cmd()"
    document = Document(name, [Heading(name), Prose(name), Table.of(["name"], [[name]]), Gap(), Legend("legend")])
    assert "<b>" not in FORMATS["html"].render(document)
    assert "\\|" in FORMATS["md"].render(document) and "<b>" not in FORMATS["md"].render(document)
    assert "\\$1\\_000" in FORMATS["latex"].render(document)
    assert "'=cmd()" not in FORMATS["csv"].render(document)  # not a formula start: left alone
    formula = Document("t", [Table.of(["name"], [["=cmd()"]])])
    assert "'=cmd()" in FORMATS["csv"].render(formula)
    assert json.loads(FORMATS["json"].render(formula)) == [{"name": "=cmd()"}]
