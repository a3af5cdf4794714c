"""Errors a user can cause: one line that says what went wrong and how to fix it."""


class UserError(Exception):
    def __init__(self, what: str, fix: str = ""):
        super().__init__(what)
        self.what = what
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.what}; {self.fix}" if self.fix else self.what


class BackendUnavailable(UserError):
    """A backend cannot run here: missing package, no CUDA, compute capability, no compiler."""


class Stop(BaseException):
    """SIGTERM (or SIGHUP) asking qbench to stop: raised from the signal handler the CLI installs, and
    handled like Ctrl-C (a BaseException, so no `except Exception` swallows it)."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class Interrupted(Exception):
    """A run stopped by Ctrl-C or a signal after its running worker was killed; what was stored stays."""

    def __init__(self, signal_name: str, stored: int, run_id: str | None, db: str):
        super().__init__(signal_name)
        self.signal_name, self.stored, self.run_id, self.db = signal_name, stored, run_id, db
