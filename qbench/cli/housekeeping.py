"""`qbench bundle` and `qbench cache` (`cache clear`): wheels for an offline host, and what qbench keeps
on disk."""

from __future__ import annotations

from pathlib import Path

import click

from qbench import DISTRIBUTION
from qbench.cli.common import FORMATS, WIDE_HELP, _emit, _names
from qbench.errors import UserError


@click.command()
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


@click.group(invoke_without_command=True)
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
