"""The command line: parse options into a config, call the library, print. Nothing else lives here."""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path

import click

from qbench import DISTRIBUTION, __version__
from qbench.errors import Interrupted, Stop, UserError
from qbench.render.escape import for_terminal


class _Formats(click.Choice):
    """--format's choices: every name in qbench.render.formats.FORMATS, read when asked (a format
    registered there is offered by every table command)."""

    def __init__(self) -> None:
        super().__init__([])

    @property
    def choices(self):
        from qbench.render.formats import FORMATS as registered

        return tuple(registered)

    @choices.setter
    def choices(self, value) -> None:
        pass


FORMATS = _Formats()


def _names(text: str) -> list[str]:
    """A comma-separated option (models, backends) as its stripped, non-empty parts."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _ints(text: str, option: str = "--ctx") -> tuple[int, ...]:
    """A comma-separated list of integers (ASCII digits: int() also takes other scripts' digits)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        if all(part.lstrip("+-").isascii() and part.lstrip("+-").isdigit() for part in parts):
            return tuple(int(part) for part in parts)
    except ValueError:  # more digits than int() reads
        pass
    raise UserError(f"{option} must be integers separated by commas, got {text[:80]!r}", "e.g. 512,2048")


class _RuntimesOption(click.Option):
    """--runtimes: its help names the registered linear runtimes (qbench.runtimes), read when shown."""

    def get_help_record(self, ctx):
        from qbench.runtimes import get_runtime, linear_runtimes

        labels = "; ".join(get_runtime(name).label for name in linear_runtimes())
        self.help = f"Runtimes for the linear formats, comma-separated: {labels}."
        return super().get_help_record(ctx)


WIDE_HELP = "Every column unwrapped (default: the table fits 120 columns, its widest cells wrapped)."


def _emit(
    data, fmt: str, headers: list[str], rows: list[list], wide: bool = False, title: str = "qbench", after=()
) -> None:
    """One table through FORMATS[fmt], then the prose lines `after` (where the format has prose):
    `data` is what JSON carries; the terminal table fits 120 columns (its widest cells wrapped) unless `wide`."""
    from qbench.render.document import Document, Gap, Prose, Table

    blocks = [Table.of(headers, rows)] + ([Gap()] + [Prose(line, wrap=False) for line in after] if after else [])
    click.echo(_renderer(fmt).render(Document(title, blocks, data=data), wide))


def _renderer(fmt: str):
    from qbench.render.formats import FORMATS as registered

    return registered[fmt]


EXIT_ON_SIGNAL = {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}


class _Group(click.Group):
    """Turns a UserError anywhere below into one line on stderr and exit status 2, and an
    interrupted run into one line that says what was kept and how to resume."""

    def invoke(self, ctx):
        try:
            with _stop_on_signals():  # from the start: imports, planning and the forkserver's start included
                return super().invoke(ctx)
        except (KeyboardInterrupt, Stop) as stop:  # before a run had anything to keep (else: Interrupted)
            name = stop.signal_name if isinstance(stop, Stop) else "SIGINT"
            click.echo(f"qbench: interrupted by {name}", err=True)
            sys.exit(EXIT_ON_SIGNAL[name])
        except UserError as error:
            click.echo(f"qbench: error: {for_terminal(error)}", err=True)
            sys.exit(2)
        except Interrupted as stop:
            kept = f"{stop.stored} session(s) of run {stop.run_id}" if stop.run_id else "no new session"
            again = _command_line()
            if sys.argv[1:2] == ["compare"] and "--resume" not in sys.argv:
                again += " --resume"
            click.echo(
                f"qbench: interrupted by {stop.signal_name}: the running session's worker was killed and "
                f"discarded; {kept} stored in {stop.db}; resume with: {again}",
                err=True,
            )
            sys.exit(EXIT_ON_SIGNAL.get(stop.signal_name, 1))


@contextlib.contextmanager
def _stop_on_signals():
    """SIGTERM and SIGHUP stop a run the way Ctrl-C does: the worker is killed, stored sessions stay."""

    def stop(signum, frame):
        raise Stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _command_line() -> str:
    return " ".join(["qbench", *sys.argv[1:]])


@click.group(cls=_Group)
@click.version_option(__version__)
def main() -> None:
    """Which quantisation backend to deploy for batch-1 LLM decode, and why."""


@main.command()
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
    cpu,
    executor,
    address,
    fmt,
    wide,
) -> None:
    """Measure decode ms/step for each backend and compare with the memory floor.

    --model and --ctx take comma-separated lists: a sweep over models x ctx x backends x graphs; with
    --executor ray, --gpu too."""
    from qbench.compare import AB_SESSIONS, CompareConfig, GpuNotHere, run_sweep
    from qbench.report import render

    gpu_types = _names(gpu) or [gpu]
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
    from dataclasses import replace

    from qbench.analysis.predict import document, shipped_for_compare, shipped_label
    from qbench.compare import predict_command
    from qbench.render.document import Gap, Prose
    from qbench.render.formats import FORMATS as registered

    if not absent.wanted.peak_bandwidth_gbps or not absent.wanted.boost_clock_mhz:
        raise absent  # nothing to predict it from (a CPU spec): the one-line error
    answers = [shipped_for_compare(config) for config in configs]
    predictions = [p for answer in answers for p in answer[0]]
    skipped = {what: why for answer in answers for what, why in answer[1].items()}
    source, uncovered = answers[0][2], answers[0][3]
    style = registered[fmt]
    output = document(predictions, skipped)
    output.data = {**output.data, "measured": False, "calibration": source}
    output.blocks = [block for index, answer in enumerate(answers) for block in (
        ([Gap()] if index else []) + document(answer[0], answer[1]).blocks)]  # fmt: skip
    wanted = absent.wanted
    predicted = tuple(dict.fromkeys(p.backend for p in predictions)) or configs[0].backends
    lines = [
        f"qbench: this machine has no {wanted.name} GPU (detected {absent.seen}): no session ran and nothing "
        f"was stored; every figure above is PREDICTED, {shipped_label(source)}.",
        f"To measure it for real, run this on a machine whose GPU is {wanted.description}:",
        f"  {_command_line()}",
        "More prediction options (--launch-us for the eager rows, --db to calibrate on your own store):",
        f"  {predict_command(replace(configs[0], backends=predicted))}",
    ]
    if uncovered:
        lines.append(f"Not in the shipped calibration, so not predicted: {', '.join(uncovered)}.")
    if style.prose:  # said in the document, prose at the table's width; a command stays whole
        output.blocks += [Gap()] + [Prose(line, "  ", wrap=not line.startswith("  ")) for line in lines]
    text = style.render(output, False)
    click.echo(text, nl=not text.endswith("\n"))
    if not style.prose:
        click.echo("\n".join(for_terminal(line) for line in lines), err=True)
    sys.exit(EXIT_PREDICTED)


@main.command()
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


@main.command()
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
    from qbench.analysis.floor import floor_ms, step_bytes
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
    records = []
    for context in contexts:
        counted = step_bytes(spec, context, fmt_backend.linear_bytes, group_size)
        records.append(
            {
                "model": spec.name,
                "gpu": gpu_spec.name,
                "backend": fmt_backend.name,
                "group_size": group_size if fmt_backend.bits < 16 else None,
                "ctx": context,
                "linear_weights": counted.linear_weights,
                "biases": counted.biases,
                "norms": counted.norms,
                "embedding_row": counted.embedding_row,
                "lm_head": counted.lm_head,
                "weights": counted.weights,
                "kv_cache": counted.kv_cache,
                "total": counted.total,
                "peak_bandwidth_gbps": gpu_spec.peak_bandwidth_gbps,
                "bandwidth_source": gpu_spec.bandwidth_source,
                "floor_ms": floor_ms(counted.total, gpu_spec.peak_bandwidth_gbps),
            }
        )
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


@main.command()
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
        sessions = _read_sessions(db)
    measured = None
    if against is not None:
        if not check_path("--against", against).is_file():
            raise UserError(f"--against {against} does not exist", f"point --against at a store measured on {gpu}")
        measured = _read_sessions(against)
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


def _read_sessions(db: str) -> list[dict]:
    from qbench.store import Store

    store = Store(db, readonly=True)
    try:
        return store.sessions()
    finally:
        store.close()


@main.command()
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.option("--wide", is_flag=True, help=WIDE_HELP)
def models(fmt, wide) -> None:
    """List the built-in model specs."""
    from qbench.specs import load_model_spec, model_names

    specs = [load_model_spec(name) for name in model_names()]
    data = [
        {
            "name": s.name,
            "layers": s.num_layers,
            "hidden": s.hidden_size,
            "heads": s.num_heads,
            "kv_heads": s.num_kv_heads,
            "vocab": s.vocab_size,
            "tied": s.tie_embeddings,
            "description": s.description,
        }
        for s in specs
    ]
    _emit(
        data,
        fmt,
        ["name", "layers", "hidden", "heads", "kv heads", "vocab", "tied", "description"],
        [list(d.values()) for d in data],
        wide,
    )


@main.command()
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.option("--wide", is_flag=True, help=WIDE_HELP)
def gpus(fmt, wide) -> None:
    """List the GPU specs with their peak bandwidth and its source."""
    from qbench.specs import gpu_specs

    data = [
        {
            "name": s.name,
            "peak_bandwidth_gbps": s.peak_bandwidth_gbps,
            "memory_gib": s.memory_gib,
            "matches": ", ".join(s.device_patterns),
            "source": s.bandwidth_source,
        }
        for s in gpu_specs().values()
    ]
    _emit(
        data,
        fmt,
        ["name", "peak GB/s", "memory GiB", "device names", "bandwidth source"],
        [list(d.values()) for d in data],
        wide,
    )


@main.command()
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.option("--wide", is_flag=True, help=WIDE_HELP)
def backends(fmt, wide) -> None:
    """List every installed backend, whether it can run here and why not."""
    from qbench.compare import probe_device
    from qbench.registry import backend_names, load_backend, warnings

    device = probe_device()
    for line in warnings():
        click.echo(f"qbench: warning: {for_terminal(line)}", err=True)
    data = []
    for name in backend_names():
        try:
            backend = load_backend(name)
        except UserError as error:
            blank = {"family": "", "runtimes": "", "kernel": "", "description": ""}
            data.append({"name": name, "available": False, "why_not": str(error), **blank})
            continue
        reason = backend.unavailable_reason(device)
        data.append(
            {
                "name": name,
                "available": reason is None,
                "why_not": reason or "",
                "family": backend.family,
                "runtimes": ",".join(backend.runtimes),
                "kernel": backend.kernel,
                "description": backend.description,
            }
        )
    click.echo(f"device: {device.name}", err=True)
    headers = ["name", "available", "why not", "family", "runtimes", "kernel", "description"]
    _emit(data, fmt, headers, [list(d.values()) for d in data], wide)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--backends", default="bnb-nf4,awq-marlin,gptq-exllamav2", show_default=True)
@click.option("--python", "python_version", default="3.12", show_default=True, help="The GPU host's Python.")
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    default=("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"),
    show_default=True,
    help="pip platform tags of the GPU host (repeatable).",
)
def bundle(directory, backends, python_version, platforms) -> None:
    """Download the wheels chosen backends need into DIRECTORY, for an offline GPU host."""
    from qbench.bundle import bundle as download

    names = _names(backends)
    try:
        sdist_only = download(names, directory, python_version, list(platforms), echo=lambda m: click.echo(m, err=True))
    except RuntimeError as error:
        raise UserError(str(error), "check the name, --python and --platform") from None
    host = f"pip install --no-index --find-links {directory} {DISTRIBUTION}"
    click.echo(f"bundle in {directory}; on the GPU host: {host}")
    for requirement in sdist_only:
        click.echo(
            f"note: {requirement} has no wheel for this platform; its source was fetched without its "
            "dependencies: add them by name to the bundle",
            err=True,
        )


@main.group(invoke_without_command=True)
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.option("--wide", is_flag=True, help=WIDE_HELP)
@click.pass_context
def cache(ctx, fmt, wide) -> None:
    """List the weights cache (quantised synthetic weights, reference logits) and the built kernels."""
    if ctx.invoked_subcommand is not None:
        return
    import time

    from qbench.kernels import builds, cache_root
    from qbench.model.cache import Cache

    store = Cache()
    entries = store.entries()  # qbench's entries only: reads their manifests, once
    data = []
    for entry in sorted(entries, key=lambda e: -e.last_used):
        about = entry.about
        if about.get("what") == "weights":
            model = about.get("model", {})
            what = (
                f"weights: {model.get('model_type', '?')} {model.get('hidden_size', '?')}x"
                f"{model.get('num_hidden_layers', '?')}, {about.get('backend')} g{about.get('group_size')}, "
                f"seed {about.get('seed')}, {about.get('device')}"
            )
        else:
            what = about.get("what", "?")
        data.append(
            {
                "key": entry.key,
                "what": what,
                "gb": round(entry.bytes / 1e9, 3),
                "last_used": time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used)),
            }
        )
    kernels = builds()
    total = sum(e.bytes for e in entries)
    others = store.others()
    click.echo(
        f"weights cache {store.folder}: {total / 1e9:.2f} GB of {store.limit / 1e9:.0f} GB (QBENCH_CACHE_GB)"
        + (f", {others} other file(s) there are not qbench's and are left alone" if others else "")
        + (" (not a folder: sessions run uncached)" if store.folder.exists() and not store.folder.is_dir() else "")
        + f"; built kernels {cache_root()}: {len(kernels)}",
        err=True,
    )
    _emit(data, fmt, ["key", "what", "GB", "last used"], [list(d.values()) for d in data], wide)


@cache.command("clear")
@click.option("--kernels", is_flag=True, help="Also remove the built CUDA kernels (a rebuild takes minutes).")
def cache_clear(kernels) -> None:
    """Remove every weights cache entry qbench wrote (and, with --kernels, the kernels it built);
    nothing else in those folders."""
    from qbench.kernels import cache_root, clear_builds
    from qbench.model.cache import Cache

    store = Cache()
    root = cache_root() if kernels else None  # a bad QBENCH_KERNEL_CACHE stops here, before anything is removed
    count, freed = store.clear()
    others = store.others()
    click.echo(
        f"removed {count} weights cache entr{'y' if count == 1 else 'ies'} ({freed / 1e9:.2f} GB) from {store.folder}"
        + (f"; left {others} other file(s) there, not qbench's" if others else "")
    )
    if root is not None:
        removed = clear_builds()
        click.echo(
            f"removed {len(removed)} kernel build(s) qbench made under {root}"
            + (": " + ", ".join(p.name for p in removed) if removed else "")
        )


def _stored_sessions(db: str, run_id: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """The sessions of the selected runs ('latest', 'all' or an id) and those runs' commands."""
    from qbench.store import Store

    store = Store(db, readonly=True)
    try:
        runs = store.run_ids()
        if not runs:
            raise UserError(f"{db} holds no runs", "run `qbench compare` first")
        selected = store.select_runs(run_id)
        if selected is None:
            raise UserError(f"no run {run_id!r} in {db}", f"runs: {', '.join(runs[-5:])}")
        return store.sessions(run_ids=selected), store.commands(selected)
    finally:
        store.close()


def _replication_cells(rows: list[dict], db: str) -> list[dict]:
    from qbench.report import replication_rows

    cells = replication_rows(rows)
    if not cells:
        raise UserError(f"the selected runs in {db} hold no bf16 rows", "replication views come from bf16 runs")
    return cells


@main.command()
@click.option("--db", default="results/qbench.sqlite", show_default=True)
@click.option("--run", "run_id", default="latest", show_default=True, help="A run id, 'latest' or 'all'.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Image file (.png, .svg, .pdf)."
)
def plot(db, run_id, out) -> None:
    """Draw the replication view of stored runs: % of floor against context, and the graphs speedup."""
    from qbench.render.plot import check_output, replication_figure
    from qbench.report import aggregate

    check_output(out, [db])
    sessions, _ = _stored_sessions(db, run_id)
    cells = _replication_cells(aggregate(sessions), db)
    drawable = ("graph_pct_of_floor", "eager_pct_of_floor", "graphs_speedup")
    if not any(cell.get(key) is not None for cell in cells for key in drawable):
        raise UserError(
            f"nothing to plot in the selected runs of {db}: no % of floor (a CPU has no datasheet bandwidth) "
            "and no graphs A/B",
            "plot runs measured on a GPU (qbench compare --graphs both, or qbench replicate)",
        )
    replication_figure(cells, out)
    click.echo(f"wrote {out}", err=True)


@main.command()
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
    from qbench.report import (
        aggregate,
        kernel_rows,
        render,
        render_kernels,
        render_replication,
        render_sessions,
        session_rows,
    )
    from qbench.store import check_output, write_output

    if out:
        check_output(out, [db])  # before anything is read: never onto a store
    sessions, commands = _stored_sessions(db, run_id)
    rows = aggregate(sessions)
    title = "\n".join(f"run {run}: `{command}`" for run, command in commands)  # CSV and JSON carry none
    if view == "replication":
        text = render_replication(_replication_cells(rows, db), fmt, title, wide)
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


@main.command()
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


if __name__ == "__main__":
    main()
