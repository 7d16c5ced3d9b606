"""The floor plan is enforced: import-linter's contracts (pyproject.toml) hold, and breaking a
layer breaks the build. Both run the real ``lint-imports``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("edgeship", "edge_runtime", "training", "compression", "export", "benchmarks")


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def test_the_import_contracts_hold() -> None:
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "house"
    dst.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "node_modules")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, dst / name, symlinks=True, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_a_back_edge_breaks_the_layers(tmp_path: Path) -> None:
    house = _copy(tmp_path)
    errors = house / "edgeship" / "core" / "errors.py"
    errors.write_text(errors.read_text() + "\nimport edgeship.benchmarks.report  # a back-edge\n")
    done = _lint(house)
    assert done.returncode != 0
    assert "Layers: the CLI on top" in done.stdout and "BROKEN" in done.stdout
    assert "edgeship.core.errors -> edgeship.benchmarks.report" in done.stdout


def test_a_stage_by_its_folder_name_is_refused(tmp_path: Path) -> None:
    house = _copy(tmp_path)
    stage = house / "export" / "validate.py"
    stage.write_text(stage.read_text() + "\nimport training.models  # two copies of one module\n")
    done = _lint(house)
    assert done.returncode != 0 and "never by their folder names BROKEN" in done.stdout
