"""Figures from stored results (matplotlib, the `plot` extra). Rendering only: every value drawn is a
figure the tables print too."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from qbench import DISTRIBUTION
from qbench.errors import UserError
from qbench.render.escape import for_plot
from qbench.store import check_output as store_check_output
from qbench.store import write_output


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        fix = f"pip install '{DISTRIBUTION}[plot]'"
        raise UserError("plots need matplotlib, which is not installed", fix) from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def check_output(path: Path, reading: Iterable[str | Path] = ()) -> None:
    """An output name matplotlib can write and that is no store (qbench.store.check_output), said
    before anything is read or drawn."""
    store_check_output(path, reading)
    plt = _pyplot()
    figure = plt.figure()
    supported = sorted(figure.canvas.get_supported_filetypes())
    plt.close(figure)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in supported:
        got = f"{path.suffix!r}" if path.suffix else "no suffix"
        raise UserError(
            f"--out {path} has {got}: the format is taken from the suffix",
            f"use one of {', '.join('.' + s for s in supported)}",
        )


def replication_figure(cells: list[dict], path: Path, title: str = "") -> None:
    """Left: % of the memory floor against context, eager (dashed) and CUDA graphs (solid), per model.
    Right: the paired graphs speedup per context with its 95% interval. One series per model,
    runtime and backend, each labelled with all three."""
    plt = _pyplot()
    figure, (floor_axes, speedup_axes) = plt.subplots(1, 2, figsize=(11, 4.2))

    def series_key(cell: dict) -> tuple[str, str, str]:  # a runtime under other switches is a series of its own
        return cell["model"], cell.get("runtime_label", cell.get("runtime", "hf")), cell.get("backend", "bf16")

    for key in sorted({series_key(c) for c in cells}):
        rows = sorted((c for c in cells if series_key(c) == key), key=lambda c: c["ctx"])
        series = f"{key[0]}, {key[2]} under {key[1]}"
        color = None
        for key, style, mode in (("graph_pct_of_floor", "-", "graphs"), ("eager_pct_of_floor", "--", "eager")):
            drawn = [c for c in rows if c.get(key) is not None]
            if drawn:
                contexts, percents = [c["ctx"] for c in drawn], [c[key] for c in drawn]
                label = for_plot(f"{series}, {mode}")
                (line,) = floor_axes.plot(contexts, percents, style, marker="o", color=color, label=label)
                color = line.get_color()
        ratios = [c for c in rows if c.get("graphs_speedup") is not None]
        if ratios:
            low = [c["graphs_speedup"] - c["graphs_interval"].low if c.get("graphs_interval") else 0 for c in ratios]
            high = [c["graphs_interval"].high - c["graphs_speedup"] if c.get("graphs_interval") else 0 for c in ratios]
            speedup_axes.errorbar(
                [c["ctx"] for c in ratios],
                [c["graphs_speedup"] for c in ratios],
                yerr=[low, high],
                marker="o",
                capsize=3,
                color=color,
                label=for_plot(series),
            )
    contexts = sorted({c["ctx"] for c in cells})
    for axes in (floor_axes, speedup_axes):
        axes.set_xscale("log", base=2)
        axes.set_xticks(contexts, [str(c) for c in contexts])
        axes.minorticks_off()
        axes.set_xlabel("context (tokens)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    floor_axes.set_ylabel("% of memory floor (datasheet bandwidth)")
    floor_axes.set_ylim(bottom=0)
    speedup_axes.set_ylabel("CUDA graphs speedup (eager / graph), 95% CI")
    speedup_axes.axhline(1.0, color="grey", linewidth=0.8)
    gpus = sorted({c["gpu"] for c in cells})
    runtimes = ", ".join(sorted({c.get("runtime", "hf") for c in cells}))
    default_title = f"bf16 + SDPA under {runtimes}, batch-1 decode on {', '.join(gpus)}"
    figure.suptitle(for_plot(title or default_title), fontsize=10)
    figure.tight_layout()
    try:
        write_output(path, lambda temporary: figure.savefig(temporary, format=path.suffix.lower()[1:], dpi=130))
    finally:
        plt.close(figure)
