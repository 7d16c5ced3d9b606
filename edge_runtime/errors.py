"""Errors a device user can act on.

``edge_runtime`` cannot import edgeship (it is copied onto devices on its own), so it has its
own family. Every message is one line naming the bad value and the fix; the edge_runtime CLI
and the edgeship CLI both print it as ``error: <message>`` and exit 2.
"""

from __future__ import annotations


class EdgeRuntimeError(Exception):
    """A problem the user can fix; the message says how."""


class ArtifactError(EdgeRuntimeError):
    """The artifact folder is missing, unreadable, altered or of an unknown schema."""


class MissingRuntimeError(EdgeRuntimeError):
    """The inference runtime the artifact needs is not installed; the message names the pip package."""


class InputError(EdgeRuntimeError):
    """An input of the wrong shape, dtype, content or file type."""
