"""The replication figure is drawn from the same cells the tables print; without matplotlib the
command says how to get it."""

import sys

import pytest

from qbench.analysis import stats
from qbench.errors import UserError
from qbench.render.plot import replication_figure


def _cells():
    return [
        {
            "model": "tiny",
            "gpu": "l4",
            "ctx": ctx,
            "eager_pct_of_floor": 20.0,
            "graph_pct_of_floor": 30.0,
            "graphs_speedup": 1.5,
            "graphs_interval": stats.Interval(1.4, 1.6, "t-log"),
        }
        for ctx in (2048, 4096)
    ]


def test_replication_figure_is_a_png(tmp_path):
    out = tmp_path / "figures" / "replication.png"
    replication_figure(_cells(), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"qbench-decode\[plot\]"):
        replication_figure(_cells(), tmp_path / "x.png")


def test_cpu_runs_have_nothing_to_plot_and_say_so():
    """A CPU has no datasheet bandwidth (no % of floor) and no graphs A/B: one line, exit 2, no file."""
    from click.testing import CliRunner

    from qbench.cli import main

    runner = CliRunner()
    fast = ["--model", "tiny", "--ctx", "32", "--warmup", "1", "--steps", "3", "--backends", "bf16", "--db", "r.sqlite"]
    assert runner.invoke(main, ["compare", *fast]).exit_code == 0
    result = runner.invoke(main, ["plot", "--db", "r.sqlite", "--out", "figure.png"])
    assert result.exit_code == 2 and "nothing to plot" in result.output
    assert "Traceback" not in result.output
    from pathlib import Path

    assert not Path("figure.png").exists()


def test_a_runtime_under_other_switches_is_a_series_of_its_own(tmp_path, monkeypatch):
    """A store of `compare --vary`: the folded cells are not drawn into the default cells' line."""
    from qbench.render import plot

    legends = []

    def capture(path, write):
        import matplotlib.pyplot as plt

        legends.extend(text.get_text() for axes in plt.gcf().axes for text in axes.get_legend().get_texts())

    monkeypatch.setattr(plot, "write_output", capture)
    folded = [dict(cell, runtime_label="lean (QBENCH_LEAN_FOLD=on)", graph_pct_of_floor=40.0) for cell in _cells()]
    replication_figure(_cells() + folded, tmp_path / "x.png")
    assert "tiny, bf16 under lean (QBENCH_LEAN_FOLD=on), graphs" in legends
    assert "tiny, bf16 under hf, graphs" in legends and len(legends) == 6  # two series, each in three entries
