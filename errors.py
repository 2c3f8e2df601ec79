"""The errors a user can act on: each is reported as one line naming the file or flag, never as
a traceback (cli.run_main), with exit status 2 unless it says otherwise."""


class UserError(Exception):
    """A problem with the user's input: reported as one line, never as a traceback."""


class DiskFullError(UserError):
    """No space left where an output is written: every later output would fail too."""


class Interrupted(UserError):
    """Ctrl-C (SIGINT) stopped the work after what was done had been saved: exit code 130."""

    exit_code = 130


class UnrecoverableError(UserError):
    """A UserError after which the process cannot end normally (HDF5 after a failed write
    crashes at the interpreter's exit): run_main reports it and ends at once."""


def first_line(error: BaseException | str, limit: int = 200) -> str:
    """The first line of an exception's message, for one-line errors."""
    return (str(error).strip().splitlines() or [''])[0][:limit]
