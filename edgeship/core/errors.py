"""The one error family library code raises.

The CLI turns any ``EdgeshipError`` into ``error: <message>`` and exit code 2, so each
message must name the bad value and the fix in one line. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class EdgeshipError(Exception):
    """A problem the user can fix; the message says how."""


class InputError(EdgeshipError):
    """A file, flag or value the user gave is wrong."""


class DataError(EdgeshipError):
    """The data cannot be used as asked (columns, classes, sizes, dates)."""


class RunError(EdgeshipError):
    """A run directory is missing, unreadable or lacks what a stage needs."""


class MissingDependencyError(EdgeshipError):
    """An optional package or system tool is not installed; the message names it."""
