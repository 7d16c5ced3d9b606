"""A re-export removes the opposite folder (old pass or old failure) under the run's lock, and
only when the manifest no longer lists it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from _models import copy_run

from edgeship.core.errors import RunError
from edgeship.core.runstore import RunDir
from edgeship.export.validate import ValidationConfig

FAILING = ValidationConfig(float_tolerance=-1.0)  # the real check, a bar no output can clear

HOLD = """
import sys, time
from edgeship.core.runstore import RunDir
with RunDir(sys.argv[1]).writing():
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.mark.slow
def test_stale_twin_goes_under_the_lock_and_only_if_unlisted(digits_run: RunDir, tmp_path: Path) -> None:
    from edgeship.export import stage
    from edgeship.export.stage import ExportConfig, export_run

    run = copy_run(digits_run, tmp_path)
    (failed,) = export_run(run, ExportConfig(formats="tflite", quantize="float32", validation=FAILING))
    assert not failed.passed and failed.dir.name == "tflite-float32.failed"
    (passed,) = export_run(run, ExportConfig(formats="tflite", quantize="float32"))
    exports = run.path / "exports/base"
    assert passed.passed and sorted(p.name for p in exports.iterdir()) == ["reference.json", "tflite-float32"]
    assert list(run.manifest["exports"]) == ["exports/base/tflite-float32"]
    assert not list(run.path.glob(".stage-*"))

    # A failure another writer committed after our export stays: the manifest lists it.
    (again,) = export_run(run, ExportConfig(formats="tflite", quantize="float32", validation=FAILING))
    assert not (exports / "tflite-float32").exists()  # now the stale twin
    stage._remove_stale(run, [passed])  # a late clean-up for the earlier pass
    assert (exports / "tflite-float32.failed").is_dir()

    # The clean-up takes the run's lock: with another process holding it, --no-wait fails.
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run.path), "30"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(RunError, match="being written by"):
            stage._remove_stale(RunDir(run.path, wait=False), [again])
        assert time.monotonic() - t0 < 10
    finally:
        holder.kill()
        holder.wait()
