"""The errors a stage raises for bad input, and how they print as one line (the commands exit with status 2).

Every one is an `InputError`: the commands catch that one class, print `error: <one line>` and exit with status 2.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad input that stops a command: the message is one line naming the file, row or field and the fix."""


class PrepareError(InputError):
    """Bad input that stops the run (missing file or column, nothing left to keep). One line, no traceback."""


class DatasetError(InputError, ValueError):
    """A dataset folder that cannot be used; the message is one line naming the file or field and the fix."""


class CommandError(InputError):
    """Bad input to a command; the message is one line saying what is wrong and how to fix it."""


class WriteError(InputError):
    """An output that cannot be written (disk full, read-only folder, a file in the way); nothing half-written is
    left behind and earlier outputs are untouched."""


def one_line(error: BaseException) -> str:
    """The whole message with its line breaks and runs of spaces collapsed."""
    return " ".join(str(error).split()) or type(error).__name__


def first_line(error: BaseException) -> str:
    """The first line of the message (e.g. of a library error that appends a long explanation)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
