"""`qbench floor` and `qbench predict`: what a step must read and what it would take, with no GPU."""

from __future__ import annotations

import click

from qbench.cli.common import FORMATS, _emit, _ints, _names, _renderer, _RuntimesOption
from qbench.errors import UserError


@click.command()
@click.option("--model", default="qwen2.5-7b", show_default=True)
@click.option("--gpu", default="h100-sxm5", show_default=True, help="GPU spec name, or auto for this machine's.")
@click.option("--ctx", default="2048", show_default=True, help="Context length(s), comma-separated.")
@click.option("--backend", default="bf16", show_default=True, help="Format whose bytes to count.")
@click.option(
    "--group-size", default=0, show_default=True, help="Group size of 4-bit formats; 0 = auto, as in compare."
)
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def floor(model, gpu, ctx, backend, group_size, fmt) -> None:
    """Bytes one decode step reads and the memory floor; needs no GPU."""
    from qbench.analysis.floor import floor_records
    from qbench.compare import check_ctx, probe_device, resolve_gpu, resolve_group_size
    from qbench.registry import load_backend
    from qbench.specs import load_gpu_spec, load_model_spec

    spec, fmt_backend = load_model_spec(model), load_backend(backend)
    contexts = _ints(ctx)
    if not contexts:
        raise UserError(f"--ctx must be one or more positive integers, got {ctx!r}")
    check_ctx(spec, contexts)
    group_size = resolve_group_size(group_size, spec)
    gpu_spec = resolve_gpu(gpu, probe_device()) if gpu == "auto" else load_gpu_spec(gpu)
    records = floor_records(spec, gpu_spec, fmt_backend, contexts, group_size)
    rows = [
        [
            r["ctx"],
            f"{r['weights'] / 1e9:.3f}",
            f"{r['kv_cache'] / 1e9:.3f}",
            f"{r['total'] / 1e9:.3f}",
            r["peak_bandwidth_gbps"],
            "" if r["floor_ms"] is None else f"{r['floor_ms']:.2f}",
        ]
        for r in records
    ]
    r = records[0]
    counted = [  # how the bytes were counted, below the table where the format has prose
        f"{spec.name} {fmt_backend.name}: linear {r['linear_weights']:,} + biases {r['biases']:,} + "
        f"norms {r['norms']:,} + embedding row {r['embedding_row']:,} + lm_head {r['lm_head']:,} bytes; "
        f"KV = layers x 2 x kv_heads x head_dim x ctx x 2 bytes.",
        f"floor ms = total bytes / ({gpu_spec.peak_bandwidth_gbps} GB/s: {gpu_spec.bandwidth_source})",
    ]
    headers = ["ctx", "weights GB", "KV GB", "total GB", "peak GB/s", "floor ms"]
    _emit(records, fmt, headers, rows, title="qbench floor", after=counted)
    if _renderer(fmt).prose:
        if gpu_spec.peak_bandwidth_gbps is None:
            click.echo(f"{gpu_spec.name} has no datasheet bandwidth: name a GPU with --gpu to get a floor", err=True)


@click.command()
@click.option("--model", default="qwen2.5-7b", show_default=True)
@click.option("--gpu", required=True, help="The GPU spec to predict (qbench gpus lists them).")
@click.option("--backends", default="bf16", show_default=True, help="Comma-separated backend names.")
@click.option("--runtimes", cls=_RuntimesOption, default="hf", show_default=True)
@click.option("--ctx", default="2048", show_default=True, help="Context length(s), comma-separated.")
@click.option("--graphs", type=click.Choice(["off", "on", "both"]), default="both", show_default=True)
@click.option(
    "--db",
    default=None,
    help="Store whose measurements calibrate (default: the H100 calibration shipped with qbench).",
)
@click.option("--calibrate-on", default="auto", show_default=True, help="GPU spec whose measurements to use.")
@click.option("--launch-us", type=float, default=None, help="The target host's kernel launch cost (eager).")
@click.option(
    "--against",
    default=None,
    help="A store measured on the target GPU: each prediction beside that measurement, with its error (validation).",
)
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def predict(model, gpu, backends, runtimes, ctx, graphs, db, calibrate_on, launch_us, against, fmt) -> None:
    """PREDICT ms/step on a GPU you do not have, from measurements stored on one you had.

    Every figure is labelled predicted and nothing is stored (README, 'Predicting a GPU you do not
    have', spells out the model)."""
    from qbench.analysis.predict import document, shipped_calibration, shipped_label
    from qbench.analysis.predict import predict as run_prediction
    from qbench.render.document import Gap, Prose
    from qbench.render.formats import FORMATS as registered
    from qbench.runtimes import linear_runtimes
    from qbench.specs import check_path, load_gpu_spec
    from qbench.store import read_sessions

    chosen, linear = tuple(_names(runtimes)), linear_runtimes()
    if not chosen or any(r not in linear for r in chosen):
        raise UserError(f"--runtimes must be one or more of {', '.join(linear)}, got {runtimes!r}")
    if calibrate_on != "auto":
        load_gpu_spec(calibrate_on)  # an unknown name is one line here
    shipped, source = None, None
    if db is None:
        shipped, source = shipped_calibration()
        sessions = []
    elif not check_path("--db", db).is_file():
        raise UserError(f"--db {db} does not exist", "point --db at a store `qbench compare` wrote on a GPU")
    else:
        sessions = read_sessions(db)
    measured = None
    if against is not None:
        if not check_path("--against", against).is_file():
            raise UserError(f"--against {against} does not exist", f"point --against at a store measured on {gpu}")
        measured = read_sessions(against)
    modes = {"off": (False,), "on": (True,), "both": (False, True)}[graphs]
    rows, skipped = run_prediction(
        model,
        gpu,
        _names(backends),
        chosen,
        _ints(ctx),
        modes,
        sessions,
        calibrate_on,
        launch_us,
        against=measured,
        calibrated=shipped,
    )
    output = document(rows, skipped)
    if source is not None:  # where the calibration came from: in the JSON, and below the table
        output.data = {**output.data, "calibration": source}
        output.blocks += [Gap(), Prose(f"{shipped_label(source)}; calibrate on your own store with --db STORE", "  ")]
    click.echo(registered[fmt].render(output, False))
