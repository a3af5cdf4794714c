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
