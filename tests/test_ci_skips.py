"""The CI rule in tests/conftest.py, run on a small test file by a real pytest in a subprocess:
under CI=true an unmarked skip and a module that skips itself fail the run, an allowed skip is
listed, and without CI the same skips stay skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CASES = '''
import pytest

def test_passes():
    pass

def test_skips_unmarked():
    pytest.skip("no sshd here")

@pytest.mark.skipif(True, reason="no QEMU here")
def test_skipif_unmarked():
    pass

@pytest.mark.allowed_skip(reason="no WebGPU adapter on this machine")
def test_skips_allowed():
    pytest.skip("WebGPU: no adapter")

@pytest.mark.xfail(reason="known", strict=True)
def test_xfails():
    assert False
'''


def _pytest(tmp_path: Path, ci: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_cases.py").write_text(CASES)
    (tmp_path / "test_gone.py").write_text('import pytest\npytest.importorskip("no_such_module_here")\n')
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(ROOT / "tests")  # conftest, loaded as a plugin; edgeship is installed
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q", "-rA",
         "--continue-on-collection-errors", "--rootdir", str(tmp_path), "-c", os.devnull, *args,
         str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist"])
def test_under_ci_a_skip_fails_unless_allowed(tmp_path: Path, workers: list[str]) -> None:
    """Also with the tests spread over workers (`./dev test` runs two): the rule runs in each
    worker, the list of allowed skips is printed by the controller."""
    done = _pytest(tmp_path, "true", *workers)
    out = done.stdout
    assert done.returncode == 1, out
    assert "FAILED test_cases.py::test_skips_unmarked - skipped under CI=true (no sshd here)" in out
    assert "ERROR test_cases.py::test_skipif_unmarked - skipped under CI=true (no QEMU here)" in out
    assert "ERROR test_gone.py" in out and "skipped while collected under CI=true" in out
    assert "allowed skips under CI (1)" in out
    assert ("test_cases.py::test_skips_allowed: no WebGPU adapter on this machine "
            "(WebGPU: no adapter)") in out
    assert "1 passed" in out and "1 xfailed" in out and "1 skipped" in out


def test_without_ci_skips_stay_skips(tmp_path: Path) -> None:
    done = _pytest(tmp_path, None)
    assert done.returncode == 0, done.stdout
    assert "allowed skips" not in done.stdout
    assert "1 passed" in done.stdout and "4 skipped" in done.stdout and "1 xfailed" in done.stdout
