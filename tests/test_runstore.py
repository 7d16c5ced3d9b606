"""The run store: stages commit whole or not at all; runs resolve by path, id or 'latest'."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgeship.core.errors import RunError
from edgeship.core.fsutil import sha256_file
from edgeship.core.runstore import SCHEMA_VERSION, RunStore


def _make_run(store: RunStore, label: str = "demo"):
    with store.new_run(label, seed=7) as run, run.stage("first", {"a": 1}) as st:
        (st.output_dir("model") / "weights.bin").write_bytes(b"abc")
        st.metrics["score"] = 0.5
        st.set_section("data", {"dataset": label})
    return run


def test_new_run_commits_manifest_with_lineage(tmp_path: Path) -> None:
    run = _make_run(RunStore(tmp_path))
    m = run.manifest
    assert m["schema_version"] == SCHEMA_VERSION
    assert m["seed"] == 7 and m["data"] == {"dataset": "demo"}
    assert m["environment"]["python"] and "numpy" in m["environment"]["packages"]
    (stage,) = m["stages"]
    assert stage["params"] == {"a": 1} and stage["metrics"] == {"score": 0.5}
    assert stage["outputs"] == [{"path": "model/weights.bin", "bytes": 3,
                                 "sha256": sha256_file(run.path / "model/weights.bin")}]
    assert stage["wall_time_s"] >= 0
    # nothing temporary is left behind
    assert [p.name for p in tmp_path.iterdir()] == [run.path.name]
    assert not [p for p in run.path.iterdir() if p.name.startswith(".")]


def test_failed_stage_leaves_run_as_it_was(tmp_path: Path) -> None:
    run = _make_run(RunStore(tmp_path))
    before = run.manifest_path.read_bytes()
    with pytest.raises(RuntimeError), run.stage("second") as st:
        (st.output_dir("model") / "weights.bin").write_bytes(b"overwritten")
        (st.output_dir("extra") / "x").write_text("x")
        raise RuntimeError("boom")
    assert run.manifest_path.read_bytes() == before
    assert (run.path / "model/weights.bin").read_bytes() == b"abc"
    assert not (run.path / "extra").exists()
    assert sorted(p.name for p in run.path.iterdir()) == ["manifest.json", "model"]


def test_failed_first_stage_leaves_no_run(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    with pytest.raises(KeyboardInterrupt), store.new_run("x", 0) as run, run.stage("train") as st:
        (st.output_dir("model") / "w").write_text("partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    assert store.list() == []


def test_ctrl_c_in_a_real_process_rolls_back(tmp_path: Path) -> None:
    """SIGINT while a stage writes: the run keeps its earlier state, byte for byte."""
    run = _make_run(RunStore(tmp_path))
    before = run.manifest_path.read_bytes()
    script = (
        "import sys, time\n"
        "from edgeship.core.runstore import RunDir\n"
        "run = RunDir(sys.argv[1])\n"
        "with run.stage('slow') as st:\n"
        "    (st.output_dir('model') / 'weights.bin').write_bytes(b'partial')\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(run.path)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=20)
    assert proc.returncode != 0
    assert run.manifest_path.read_bytes() == before
    assert (run.path / "model/weights.bin").read_bytes() == b"abc"
    assert not [p for p in run.path.iterdir() if p.name.startswith(".")]


def test_resolve_by_path_id_prefix_and_latest(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    first = _make_run(store, "first")
    second = _make_run(store, "second")
    assert store.resolve("latest").path == second.path
    assert store.resolve(first.id).path == first.path
    assert store.resolve(str(first.path)).path == first.path
    assert store.resolve(first.id[:-3]).path == first.path
    with pytest.raises(RunError, match="no run 'nope'"):
        store.resolve("nope")


def test_latest_on_empty_store_says_how_to_make_a_run(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="edgeship train"):
        RunStore(tmp_path / "empty").resolve("latest")


def test_unwritable_runs_dir_is_an_error_naming_the_fix(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = RunStore(blocker / "runs")
    with pytest.raises(RunError, match="--runs-dir"), store.new_run("x", 0):
        pass


def test_env_var_sets_the_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESHIP_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert RunStore().root == tmp_path / "elsewhere"


def test_manifest_is_plain_json_with_normal_permissions(tmp_path: Path) -> None:
    run = _make_run(RunStore(tmp_path))
    json.loads(run.manifest_path.read_text())
    mask = os.umask(0)
    os.umask(mask)
    assert run.manifest_path.stat().st_mode & 0o777 == 0o666 & ~mask
