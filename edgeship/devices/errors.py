"""What a failed deploy step raises: one error class per kind of fix its message names."""

from __future__ import annotations

from edgeship.core.errors import EdgeshipError


class DeployError(EdgeshipError):
    """A deploy step failed on the device; the message says what to do."""


class DevicePythonError(DeployError):
    """The device has no usable python3 or no venv support."""


class NoSpaceError(DeployError):
    """The device's disk is too full for the bundle or the venv."""


class PipInstallError(DeployError):
    """pip could not install the runtime's requirements on the device."""


class VerifyError(DeployError):
    """A bundle file on the device does not have the sha256 that was sent."""


class GoldenCheckError(DeployError):
    """The new bundle's artifacts do not load or answer their golden inputs on the device."""
