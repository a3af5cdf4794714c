"""`qbench export`, `qbench plot` and `qbench report`: what the stored runs say, written out."""

from __future__ import annotations

from pathlib import Path

import click

from qbench.cli.common import FORMATS, _command_line
from qbench.errors import UserError


@click.command()
@click.option("--db", default="results/qbench.sqlite", show_default=True)
@click.option("--run", "run_id", default="latest", show_default=True, help="A run id, 'latest' or 'all'.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Image file (.png, .svg, .pdf)."
)
def plot(db, run_id, out) -> None:
    """Draw the replication view of stored runs: % of floor against context, and the graphs speedup."""
    from qbench.analysis.aggregate import replication_cells
    from qbench.render.plot import check_output, replication_figure
    from qbench.report import aggregate
    from qbench.store import stored_sessions

    check_output(out, [db])
    sessions, _ = stored_sessions(db, run_id)
    cells = replication_cells(aggregate(sessions), db)
    drawable = ("graph_pct_of_floor", "eager_pct_of_floor", "graphs_speedup")
    if not any(cell.get(key) is not None for cell in cells for key in drawable):
        raise UserError(
            f"nothing to plot in the selected runs of {db}: no % of floor (a CPU has no datasheet bandwidth) "
            "and no graphs A/B",
            "plot runs measured on a GPU (qbench compare --graphs both, or qbench replicate)",
        )
    replication_figure(cells, out)
    click.echo(f"wrote {out}", err=True)


@click.command()
@click.option("--db", default="results/qbench.sqlite", show_default=True)
@click.option("--run", "run_id", default="latest", show_default=True, help="A run id, 'latest' or 'all'.")
@click.option(
    "--format",
    "fmt",
    type=FORMATS,
    default="md",
    show_default=True,
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write here, not stdout.")
@click.option(
    "--view",
    type=click.Choice(["compare", "replication", "kernels", "sessions"]),
    default="compare",
    show_default=True,
    help="compare: one row per backend and graphs setting; replication: `qbench replicate`'s table (bf16 rows); "
    "kernels: the largest CUDA kernels of a profiled step per cell (GPU runs); "
    "sessions: where each session's time went (start, imports, load, gate, timed blocks, profile).",
)
@click.option(
    "--wide",
    is_flag=True,
    help="Every column, unwrapped, in table and LaTeX output (default: the compact set, fitting 120 columns).",
)
def export(db, run_id, fmt, out, view, wide) -> None:
    """Write a stored run's table as Markdown, CSV, JSON, LaTeX (booktabs) or HTML."""
    from qbench.analysis.aggregate import replication_cells
    from qbench.report import (
        aggregate,
        kernel_rows,
        render,
        render_kernels,
        render_replication,
        render_sessions,
        session_rows,
    )
    from qbench.store import check_output, stored_sessions, write_output

    if out:
        check_output(out, [db])  # before anything is read: never onto a store
    sessions, commands = stored_sessions(db, run_id)
    rows = aggregate(sessions)
    title = "\n".join(f"run {run}: `{command}`" for run, command in commands)  # CSV and JSON carry none
    if view == "replication":
        text = render_replication(replication_cells(rows, db), fmt, title, wide)
    elif view == "kernels":
        profiled = kernel_rows(sessions)
        if not profiled:
            raise UserError(f"the selected runs in {db} hold no kernel profiles", "kernels are profiled on CUDA GPUs")
        text = render_kernels(profiled, fmt, title, wide)
    elif view == "sessions":
        timed = session_rows(sessions)
        if not timed:
            raise UserError(f"the selected runs in {db} hold no per-session phases", "phases are stored since 0.2")
        text = render_sessions(timed, fmt, title, wide)
    else:
        text = render(rows, fmt, title, wide=wide)
    if out:
        write_output(out, lambda path: path.write_text(text + "\n"))
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text)


@click.command()
@click.option(
    "--db",
    "dbs",
    multiple=True,
    default=("results/qbench.sqlite",),
    show_default=True,
    help="Store; repeat for several (each is aggregated on its own, as qbench export does).",
)
@click.option("--run", "run_id", default="all", show_default=True, help="A run id, 'latest' or 'all' (per store).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="report.html or report.md.")
@click.option("--budget-ms", default="", help="Latency budgets in ms/token, comma-separated.")
@click.option("--budget-hz", default="", help="Control-loop rates in Hz (one token per tick), comma-separated.")
@click.option("--budget-mib", default="", help="GPU-memory budgets in MiB, comma-separated.")
@click.option("--format", "fmt", type=FORMATS, default=None, help="Default: from --out's suffix (.html or .md).")
def report(dbs, run_id, out, budget_ms, budget_hz, budget_mib, fmt) -> None:
    """Write the deployment report: which backend, in which runtime, for each latency and memory budget.

    Without budgets, the standard control-loop rates the data spans and one memory budget per memory tier."""
    from qbench.deploy_report import ReportConfig, parse_budgets, write

    budgets = parse_budgets("ms", budget_ms) + parse_budgets("hz", budget_hz) + parse_budgets("mib", budget_mib)
    config = ReportConfig(dbs=tuple(dbs), out=out, run=run_id, budgets=budgets, command=_command_line(), format=fmt)
    click.echo(f"wrote {write(config)}", err=True)
