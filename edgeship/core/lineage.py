"""What produced a number: versions, commit, machine. Recorded in every manifest."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from edgeship.core import __version__

# The packages whose versions change results; recorded when installed.
KEY_PACKAGES = (
    "numpy",
    "tensorflow-cpu",
    "tensorflow",
    "tf-keras",
    "tensorflow-model-optimization",
    "scikit-learn",
    "pandas",
    "ai-edge-litert",
    "onnx",
    "onnxruntime",
    "tf2onnx",
    "apache-tvm",
    "apache-tvm-ffi",
)


def package_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def git_commit() -> dict[str, object] | None:
    """The commit of the edgeship checkout, if it is one; ``dirty`` marks uncommitted edits."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"sha": sha, "dirty": bool(status.strip())}


def environment() -> dict[str, object]:
    return {
        "edgeship_version": __version__,
        "git": git_commit(),
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": package_versions(),
    }
