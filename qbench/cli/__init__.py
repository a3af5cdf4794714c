"""The command line: parse options into a config, call the library, print. Nothing else lives here.

One module per command group, each importing only the shared helpers in `common`: measure (compare,
replicate), estimate (floor, predict), listings (models, gpus, backends), housekeeping (bundle,
cache), stored (export, plot, report). `python -m qbench.cli` runs `main` (__main__.py)."""

from __future__ import annotations

import sys

import click

from qbench import __version__
from qbench.cli import estimate, housekeeping, listings, measure, stored
from qbench.cli.common import _command_line, _stop_on_signals
from qbench.cli.measure import EXIT_PREDICTED
from qbench.errors import Interrupted, Stop, UserError
from qbench.render.escape import for_terminal

__all__ = ["EXIT_ON_SIGNAL", "EXIT_PREDICTED", "main"]


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
            from qbench.execute.progress import resume_command

            again = resume_command(_command_line())  # compare gains --resume; replicate resumes unless --fresh
            click.echo(
                f"qbench: interrupted by {stop.signal_name}: the running session's worker was killed and "
                f"discarded; {kept} stored in {stop.db}; resume with: {again}",
                err=True,
            )
            sys.exit(EXIT_ON_SIGNAL.get(stop.signal_name, 1))


COMMANDS = (  # `qbench --help` lists them by name
    measure.compare,
    measure.replicate,
    estimate.floor,
    estimate.predict,
    listings.models,
    listings.gpus,
    listings.backends,
    housekeeping.bundle,
    housekeeping.cache,
    stored.plot,
    stored.export,
    stored.report,
)


@click.group(cls=_Group, commands=COMMANDS)
@click.version_option(__version__)
def main() -> None:
    """Which quantisation backend to deploy for batch-1 LLM decode, and why."""
