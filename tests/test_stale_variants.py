"""Variants are versioned by content: a recompress under the same name refuses without --force,
and with it the exports and measurements of the replaced model go; any left behind (a kill
between the commit and the clean-up) are flagged or refused by show, bench, report and deploy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from clihelp import assert_one_line_error, invoke, invoke_json

from edgeship.core.runstore import RunDir

pytestmark = pytest.mark.slow

QUICK_BENCH = ("--rounds", "1", "--runs", "5", "--warmup", "1", "--threads", "1")


@pytest.fixture()
def run(digits_run: RunDir, tmp_path: Path) -> RunDir:
    dst = tmp_path / "runs" / digits_run.path.name
    shutil.copytree(digits_run.path, dst)
    return RunDir(dst)


def _bench_files(run: RunDir, variant: str) -> list[Path]:
    return [p for p in sorted((run.path / "bench").glob("*.json"))
            if json.loads(p.read_text()).get("variant") == variant]


def test_recompress_retires_what_the_old_model_made_and_readers_refuse_leftovers(
        run: RunDir, tmp_path: Path) -> None:
    runs = run.path.parent
    invoke_json(runs, "compress", run.id, "--prune", "0.5", "--epochs", "1", "--name", "v")
    invoke_json(runs, "export", run.id, "--variant", "base,v", "--format", "tflite", "--quantize", "float32")
    assert invoke(runs, "bench", run.id, *QUICK_BENCH).exit_code == 0
    kept = tmp_path / "kept"
    shutil.copytree(run.path / "exports" / "v", kept / "exports")
    old_results = _bench_files(run, "v")
    assert old_results and json.loads(old_results[0].read_text())["source_sha256"]
    for p in old_results:
        shutil.copy2(p, kept / p.name)

    # The same name again is refused before anything trains.
    assert_one_line_error(invoke(runs, "compress", run.id, "--prune", "0.5", "--name", "v"),
                          "already has a variant 'v'", "--force")

    # --force replaces the model; what the old model made goes with it, under the lock.
    invoke_json(runs, "compress", run.id, "--prune", "0.6", "--epochs", "1", "--name", "v", "--force")
    assert not (run.path / "exports" / "v").exists()
    assert _bench_files(run, "v") == []
    assert not [k for k in run.manifest.get("exports", {}) if k.startswith("exports/v/")]
    assert _bench_files(run, "base")  # the other variant's results stay
    assert [s["params"]["force"] for s in run.stages("compress")] == [False, True]

    # A kill between the commit and the clean-up would leave them: every reader compares sha256.
    shutil.copytree(kept / "exports", run.path / "exports" / "v")
    for p in old_results:
        shutil.copy2(kept / p.name, p)
    shown = invoke(runs, "show", run.id)
    assert shown.exit_code == 0 and "stale" in shown.stdout and "exports/v/tflite-float32" in shown.stdout
    assert_one_line_error(invoke(runs, "bench", run.id, "--variant", "v", *QUICK_BENCH),
                          "stale", "exports/v/tflite-float32", "edgeship export")
    assert_one_line_error(invoke(runs, "deploy", "pi", run.id, "--host", "nobody@127.0.0.1", "--port", "9",
                                 "--variant", "v"), "stale", "exports/v/tflite-float32")
    rep = invoke(runs, "report", run.id, "--format", "json")
    assert rep.exit_code == 0, rep.stderr
    assert "stale" in rep.stderr
    report = json.loads(rep.stdout)
    assert all(row["variant"] != "v" for d in report["devices"] for row in d["rows"])
    assert all(r["variant"] != "v" for r in report["recommendations"])
    assert any("stale" in (d["note"] or "") for d in report["devices"])

    # Only stale results: the report refuses in one line.
    for p in _bench_files(run, "base"):
        p.unlink()
    assert_one_line_error(invoke(runs, "report", run.id), "stale")

    # Exporting again makes them current.
    invoke_json(runs, "export", run.id, "--variant", "v", "--format", "tflite", "--quantize", "float32")
    assert "stale" not in invoke(runs, "show", run.id).stdout
