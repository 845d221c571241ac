"""The errors a stage raises for bad input, and how they print as one line (the commands exit with status 2)."""

from __future__ import annotations


class PrepareError(Exception):
    """Bad input that stops the run (missing file or column, nothing left to keep). One line, no traceback."""


class DatasetError(ValueError):
    """A dataset folder that cannot be used; the message is one line naming the file or field and the fix."""


class CommandError(Exception):
    """Bad input to a command; the message is one line saying what is wrong and how to fix it."""


def one_line(error: BaseException) -> str:
    """The whole message with its line breaks and runs of spaces collapsed."""
    return " ".join(str(error).split()) or type(error).__name__


def first_line(error: BaseException) -> str:
    """The first line of the message (e.g. of a library error that appends a long explanation)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
