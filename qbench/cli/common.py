"""What every command shares: --format's choices, the comma-separated options, one table printed,
the signals that stop a run, the command line as typed. Command modules import this, never each other."""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys

import click

from qbench.errors import Stop, UserError


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
    """The command as typed, quoted for a POSIX shell where a word needs it (`--vary "A=off, on"`), so
    the resume and measure lines qbench prints from it paste back as they ran."""
    return shlex.join(["qbench", *sys.argv[1:]])
