"""pyproject.toml says what its own metadata needs: the build backend that reads it, one version."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_build_requires_a_setuptools_that_reads_the_license_string() -> None:
    """An SPDX ``license = "..."`` string (PEP 639) is refused by setuptools before 77."""
    data = _pyproject()
    assert isinstance(data["project"]["license"], str)
    (req,) = [r for r in data["build-system"]["requires"] if r.startswith("setuptools")]
    m = re.fullmatch(r"setuptools>=(\d+)(?:\.\d+)*", req.replace(" ", ""))
    assert m and int(m[1]) >= 77, req


def test_the_version_is_written_once() -> None:
    """pyproject takes the version from edgeship.core, where the code reads it too."""
    import edgeship
    from edgeship.core import __version__

    data = _pyproject()
    assert "version" not in data["project"] and "version" in data["project"]["dynamic"]
    assert data["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "edgeship.core.__version__"}
    assert edgeship.__version__ == __version__
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", __version__)
