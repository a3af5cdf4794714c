"""`qbench compare` and `qbench replicate`: the commands that measure (and, for a GPU this machine is
not, the PREDICTED answer of compare)."""

from __future__ import annotations

import sys

import click

from qbench import DISTRIBUTION
from qbench.cli.common import (
    FORMATS,
    _command_line,
    _ints,
    _names,
    _renderer,
    _RuntimesOption,
    _stop_on_signals,
)
from qbench.errors import UserError
from qbench.render.escape import for_terminal


@click.command()
@click.option(
    "--model", default="smollm2-135m", show_default=True, help="Built-in name, config.json or checkpoint folder."
)
@click.option(
    "--gpu",
    default="auto",
    show_default=True,
    help="GPU spec name; must match the detected device. With --executor ray: the types to run on, comma-separated.",
)
@click.option("--backends", default="available", show_default=True, help="Comma-separated names, or 'available'.")
@click.option("--runtimes", cls=_RuntimesOption, default="hf", show_default=True)
@click.option("--ctx", default="512", show_default=True, help="Context length(s), comma-separated.")
@click.option(
    "--graphs",
    type=click.Choice(["off", "on", "both", "auto"]),
    default="auto",
    show_default=True,
    help="CUDA graph replay; auto = both on a GPU, off on a CPU.",
)
@click.option(
    "--sessions",
    default=0,
    show_default=True,
    help="Fresh worker processes per cell; 0 = auto: 10 where graphs are A/B-tested (on a GPU), else 1.",
)
@click.option("--warmup", default=5, show_default=True, help="Untimed steps before timing.")
@click.option("--steps", default=30, show_default=True, help="Timed steps per block.")
@click.option(
    "--weights",
    default="auto",
    show_default=True,
    help="auto (a checkpoint folder's own weights, else synthetic) | synthetic | gguf | PATH (folder or .gguf).",
)
@click.option(
    "--group-size",
    default=0,
    show_default=True,
    help="Group size of 4-bit formats; 0 = 128, or 64/32 where the model's shapes need it.",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--timeout", default=900.0, show_default=True, help="Seconds before a session is killed.")
@click.option("--db", default="results/qbench.sqlite", show_default=True, help="SQLite store.")
@click.option(
    "--rounds",
    default=1,
    show_default=True,
    help="Blocks per graphs setting in each session, interleaved in a random order.",
)
@click.option("--resume", is_flag=True, help="Skip sessions already stored with the same configuration.")
@click.option(
    "--vary",
    multiple=True,
    metavar="NAME=V1,V2",
    help="A/B a measuring switch (QBENCH_LEAN_*; repeatable: every combination): a cell per value, "
    "their sessions interleaved; rows gain vs base x.",
)
@click.option(
    "--cpu",
    default="off",
    show_default=True,
    help="Pin the decode loop's thread: off, auto (the fastest core by a fixed workload, now) or a core number.",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: sessions on this machine; ray: each session a Ray task on a node with the named GPU "
    f"(pip install '{DISTRIBUTION}[ray]').",
)
@click.option(
    "--address", default=None, help="With --executor ray: the cluster's head (host:port); default a local one."
)
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.option("--wide", is_flag=True, help="Every column in the terminal table (default: what fits 120 columns).")
def compare(
    model,
    gpu,
    backends,
    runtimes,
    ctx,
    graphs,
    sessions,
    warmup,
    steps,
    weights,
    group_size,
    seed,
    timeout,
    db,
    rounds,
    resume,
    vary,
    cpu,
    executor,
    address,
    fmt,
    wide,
) -> None:
    """Measure decode ms/step for each backend and compare with the memory floor.

    --model and --ctx take comma-separated lists: a sweep over models x ctx x backends x graphs; with
    --executor ray, --gpu too; --vary adds the measuring switches' values."""
    from qbench.compare import AB_SESSIONS, CompareConfig, GpuNotHere, run_sweep
    from qbench.report import render
    from qbench.settings import parse_vary

    gpu_types = _names(gpu) or [gpu]
    varied = parse_vary(vary)  # a bad one: one line, before anything runs
    if executor == "local" and len(gpu_types) > 1:
        raise UserError(
            f"--gpu {gpu}: one machine measures its own GPU only", "sweep several GPU types with --executor ray"
        )
    if executor == "local" and address is not None:
        raise UserError("--address names a Ray cluster", "add --executor ray, or leave --address out")
    defaulted = click.core.ParameterSource.DEFAULT
    context = click.get_current_context()
    quick = all(context.get_parameter_source(name) == defaulted for name in ("model", "sessions"))
    configs = [
        CompareConfig(
            model=one_model,
            gpu=one_gpu,
            backends=tuple(_names(backends)),
            runtimes=tuple(_names(runtimes)),
            ctx=_ints(ctx),
            graphs=graphs,
            sessions=sessions,
            warmup=warmup,
            steps=steps,
            weights=weights,
            group_size=group_size,
            seed=seed,
            timeout=timeout,
            db=db,
            resume=resume,
            rounds=rounds,
            cpu=cpu,
            quick=quick,
            vary=varied,
        )
        for one_model in _names(model) or [model]
        for one_gpu in gpu_types
    ]

    def announce(the_plan) -> None:
        how = "" if the_plan.config.sessions else " (--sessions auto)"
        if quick and the_plan.sessions < AB_SESSIONS and the_plan.device.kind == "cuda":
            how = (
                f" (a quick first look; the full-rigour run, {AB_SESSIONS} sessions per cell with BCa intervals: "
                f"qbench compare --model {the_plan.config.model} --sessions {AB_SESSIONS})"
            )
        click.echo(
            for_terminal(
                f"{the_plan.config.model}: device {the_plan.device.name} -> spec {the_plan.gpu.name}; "
                f"{the_plan.sessions} session(s) per cell{how}"
            ),
            err=True,
        )
        for line in the_plan.notes:
            click.echo(for_terminal(f"note: {line}"), err=True)
        for name, reason in the_plan.skipped.items():
            click.echo(for_terminal(f"skipping {name}: {reason}"), err=True)
        if executor == "local" and the_plan.device.kind == "cpu":
            from qbench.analysis.predict import cpu_run_warning

            slow = cpu_run_warning(the_plan)  # a 7B-class model: minutes a session, said before the first
            if slow:
                click.echo(for_terminal(f"warning: {slow}"), err=True)

    with _stop_on_signals():
        if executor == "ray":
            from qbench.execute.ray import run_ray_sweep

            outcomes, rows = run_ray_sweep(configs, address, _command_line(), announce)
        else:
            try:
                outcomes, rows = run_sweep(configs, None, _command_line(), announce)  # None: probed after checks
            except GpuNotHere as absent:  # raised while planning: no worker started, nothing written
                _answer_predicted(configs, absent, fmt)
    measured = sum(o.measured for o in outcomes)
    reused = sum(o.reused for o in outcomes)
    run_ids = [o.run_id for o in outcomes if o.run_id]
    if measured:
        title = f"run {', '.join(run_ids)}: {measured} session(s) measured"
        title += f", {reused} stored earlier and counted (--resume)" if reused else ""
    else:
        title = f"no new sessions: the {reused} stored session(s) this command counts (--resume)"
    click.echo(render(rows, fmt, f"{title}; stored in {db}", wide=wide))  # CSV and JSON carry no title
    if not any(row["status"].startswith("ok") for row in rows):
        click.echo("qbench: no session succeeded; the status column says why", err=True)
        sys.exit(1)


# `qbench compare --gpu G` on a machine without G: the table printed is PREDICTED from the shipped
# calibration and nothing was measured or stored. Not 0: a script that measures (`compare && export`)
# must not take a prediction for its measurement; not 1 or 2: nothing failed and the input was fine.
EXIT_PREDICTED = 3


def _answer_predicted(configs: list, absent, fmt: str) -> None:
    """Print the PREDICTED table for the GPU this machine is not, then how to measure it; exit 3."""
    from qbench.analysis.predict import compare_answer

    style = _renderer(fmt)
    output, lines = compare_answer(configs, absent, _command_line(), style.prose)
    text = style.render(output, False)
    click.echo(text, nl=not text.endswith("\n"))
    if not style.prose:
        click.echo("\n".join(for_terminal(line) for line in lines), err=True)
    sys.exit(EXIT_PREDICTED)


@click.command()
@click.option("--models", default="qwen2.5-7b,llama-3.1-8b,mistral-7b-v0.3", show_default=True)
@click.option("--ctx", default="2048,4096,8192,16384", show_default=True)
@click.option("--sessions", default=10, show_default=True)
@click.option("--warmup", default=5, show_default=True)
@click.option("--steps", default=30, show_default=True)
@click.option("--timeout", default=900.0, show_default=True)
@click.option("--db", default="results/qbench.sqlite", show_default=True)
@click.option("--rounds", default=1, show_default=True, help="Eager/graph blocks per session, interleaved.")
@click.option("--fresh", is_flag=True, help="Measure again even where sessions are stored (default: resume).")
@click.option("--cpu", default="off", show_default=True, help="Pin the decode loop's thread: off, auto or a core.")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def replicate(models, ctx, sessions, warmup, steps, timeout, db, rounds, fresh, cpu, fmt) -> None:
    """The research protocol on this GPU: bf16 SDPA, graphs A/B, fresh sessions, fraction of floor."""
    from qbench.compare import CompareConfig, probe_device, run_sweep
    from qbench.report import render_replication, replication_rows

    configs = [
        CompareConfig(
            model=model,
            backends=("bf16",),
            ctx=_ints(ctx),
            graphs="both",
            sessions=sessions,
            warmup=warmup,
            steps=steps,
            timeout=timeout,
            db=db,
            resume=not fresh,
            rounds=rounds,
            cpu=cpu,
        )
        for model in _names(models) or [models]
    ]
    device = probe_device()  # after the options are checked, so a bad one is named on any machine
    if device.kind != "cuda":
        raise UserError("replicate measures CUDA-graph A/B and needs a CUDA GPU", "run it on a GPU machine")
    with _stop_on_signals():
        _, rows = run_sweep(configs, device, _command_line())
    click.echo(render_replication(replication_rows(rows), fmt))
