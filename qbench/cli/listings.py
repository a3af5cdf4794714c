"""`qbench models`, `qbench gpus` and `qbench backends`: what qbench knows and what can run here."""

from __future__ import annotations

import click

from qbench.cli.common import FORMATS, WIDE_HELP, _emit
from qbench.errors import UserError
from qbench.render.escape import for_terminal


@click.command()
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


@click.command()
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


@click.command()
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
