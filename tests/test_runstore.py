"""The run store: stages commit whole or not at all; runs resolve by path, id or 'latest'."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgeship.core.errors import RunError
from edgeship.core.fsutil import sha256_file
from edgeship.core.runstore import SCHEMA_VERSION, RunDir, RunStore


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
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal: see _CTRL_C_SCRIPT\n"
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


# ---------------------------------------------------------------- concurrency and crashes (issue 12)

_KILL_SCRIPT = """
import os, signal, sys
from edgeship.core.runstore import RunDir

point, when = int(sys.argv[2]), sys.argv[3]
calls = 0
real_replace = os.replace


def replace(src, dst):  # every rename of a commit is a point a kill can land on
    global calls
    calls += 1
    if when == "before" and calls == point:
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
    if when == "after" and calls == point:
        os.kill(os.getpid(), signal.SIGKILL)


os.replace = replace
run = RunDir(sys.argv[1])
with run.stage("second", {"b": 2}) as st:
    (st.output_dir("model") / "weights.bin").write_bytes(b"new weights")  # replaces a folder
    (st.output_dir("extra") / "x.txt").write_text("x")  # a new one
    (st.output_dir("variants/v1") / "w").write_text("v1")  # a new nested one
    st.set_section("variants", {**run.manifest.get("variants", {}), "v1": {"dir": "variants/v1"}})
print("renames", calls, flush=True)
"""


def _files(run_path: Path) -> dict[str, str]:
    """Every visible file of a run but the manifest, by path: its sha256."""
    return {str(p.relative_to(run_path)): sha256_file(p) for p in sorted(run_path.rglob("*"))
            if p.is_file() and p.name != "manifest.json"
            and not any(part.startswith(".") for part in p.relative_to(run_path).parts)}


def _matches_manifest(run_path: Path) -> None:
    """The newest record of each output names a file that is there with that content."""
    latest: dict[str, str] = {}
    for stage in json.loads((run_path / "manifest.json").read_text())["stages"]:
        for out in stage["outputs"]:
            latest[out["path"]] = out["sha256"]
    files = _files(run_path)
    assert {p: files.get(p) for p in latest} == latest
    for name, v in json.loads((run_path / "manifest.json").read_text()).get("variants", {}).items():
        assert (run_path / v["dir"]).is_dir(), name


def _kill_run(run_path: Path, point: int, when: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(run_path), str(point), when],
                          capture_output=True, text=True, timeout=60)


def test_a_kill_at_any_commit_point_leaves_the_old_or_the_new_run(tmp_path: Path) -> None:
    """SIGKILL before and after each rename of a commit: `edgeship show` reads the run, and
    manifest and files are both the state before the stage or both the state after it."""
    from clihelp import invoke

    with RunStore(tmp_path / "template").new_run("template", 7) as template, \
            template.stage("first") as st:  # no data section: `show` renders it without a split
        (st.output_dir("model") / "weights.bin").write_bytes(b"abc")
    old_manifest = template.manifest_path.read_bytes()
    old_files = _files(template.path)

    whole = tmp_path / "whole" / template.path.name
    shutil.copytree(template.path, whole)
    done = _kill_run(whole, 0, "never")
    assert done.returncode == 0, done.stderr
    renames = int(done.stdout.split()[-1])
    assert renames >= 4  # the outputs, and the manifest after them
    new_files = _files(whole)
    assert new_files != old_files

    points = [(k, "before") for k in range(1, renames + 1)] + [(renames, "after")]
    for k, when in points:
        case = tmp_path / f"kill-{when}-{k}" / template.path.name
        shutil.copytree(template.path, case)
        killed = _kill_run(case, k, when)
        assert killed.returncode == -signal.SIGKILL, (k, when, killed.stderr)

        shown = invoke(case.parent, "show", str(case))
        assert shown.exit_code == 0, (k, when, shown.stderr)
        assert "Traceback" not in shown.stderr
        manifest = json.loads((case / "manifest.json").read_text())
        if manifest["stages"][-1]["name"] == "second":
            assert _files(case) == new_files, (k, when)
            assert manifest["variants"] == {"v1": {"dir": "variants/v1"}}
        else:
            assert (case / "manifest.json").read_bytes() == old_manifest, (k, when)
            assert _files(case) == old_files, (k, when)
        _matches_manifest(case)
        with RunDir(case).writing():  # opening it for writing clears every leftover
            pass
        assert not [p.name for p in case.iterdir() if p.name.startswith(".")], (k, when)


_CTRL_C_SCRIPT = """
import os, signal, sys
from pathlib import Path
from edgeship.core.runstore import RunDir

# Ctrl-C raises KeyboardInterrupt, as at a terminal, even when this process inherited SIGINT
# ignored (a test run started as a background job of a non-interactive shell passes that on).
signal.signal(signal.SIGINT, signal.default_int_handler)

at = sys.argv[2]
real_replace = os.replace


def replace(src, dst):  # Ctrl-C just before the named rename
    dst = Path(dst)
    where = "staging" if dst.parent.name.startswith(".stage-") else "run"
    if f"{dst.name} in {where}" == at:
        os.kill(os.getpid(), signal.SIGINT)
    real_replace(src, dst)


os.replace = replace
run = RunDir(sys.argv[1])
try:
    with run.stage("second") as st:
        (st.output_dir("model") / "weights.bin").write_bytes(b"new weights")
except KeyboardInterrupt as e:
    print("saved" if getattr(e, "stage_saved", False) else "rolled back", flush=True)
"""


@pytest.mark.parametrize(("at", "outcome"), [("manifest.json in staging", "rolled back"),
                                             (".journal.json in run", "saved"),
                                             ("model in run", "saved"),
                                             ("manifest.json in run", "saved")])
def test_ctrl_c_during_a_commit_says_truly_whether_the_stage_was_saved(
        tmp_path: Path, at: str, outcome: str) -> None:
    """Before the journal, Ctrl-C rolls the stage back; from the journal on, the commit
    completes and the interrupt says so (the CLI prints "had just been saved")."""
    run = _make_run(RunStore(tmp_path))
    before = run.manifest_path.read_bytes()
    done = subprocess.run([sys.executable, "-c", _CTRL_C_SCRIPT, str(run.path), at],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == outcome, done.stderr
    if outcome == "saved":
        assert [s["name"] for s in run.stages()] == ["first", "second"]
        assert (run.path / "model/weights.bin").read_bytes() == b"new weights"
    else:
        assert run.manifest_path.read_bytes() == before
        assert (run.path / "model/weights.bin").read_bytes() == b"abc"
    _matches_manifest(run.path)
    assert not [p.name for p in run.path.iterdir() if p.name.startswith(".")]


_HOLD_SCRIPT = """
import sys, time
from edgeship.core.runstore import RunDir, RunStore

run = RunDir(sys.argv[1])
with run.stage("slow") as st:
    (st.output_dir("model") / "weights.bin").write_bytes(b"partial")
    if len(sys.argv) > 2:
        with RunStore(sys.argv[2]).new_run("half-made", 0) as new, new.stage("train") as st2:
            (st2.output_dir("model") / "w").write_text("partial")
            print("ready", flush=True)
            time.sleep(float(sys.argv[3]))
    else:
        print("ready", flush=True)
        time.sleep(60)
"""


def _holder(run_path: Path, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_SCRIPT, str(run_path), *extra],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_stale_staging_and_pending_runs_are_removed_on_next_open(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    run = _make_run(store)
    before = run.manifest_path.read_bytes()
    proc = _holder(run.path, str(tmp_path), "60")
    proc.kill()
    proc.wait(timeout=20)
    assert [p for p in run.path.iterdir() if p.name.startswith(".stage-")]
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".pending-")]
    assert run.manifest_path.read_bytes() == before

    # a live writer's pending run is left alone
    live_root = tmp_path / "live"
    live_root.mkdir()
    live_run = _make_run(RunStore(live_root), "live")
    live = _holder(live_run.path, str(tmp_path), "60")
    try:
        second = _make_run(store, "second")  # opening the store for writing
        with run.stage("next") as st:  # and the run
            (st.output_dir("extra") / "x").write_text("x")
        pending = [p for p in tmp_path.iterdir() if p.name.startswith(".pending-")]
        assert len(pending) == 1 and (pending[0] / ".lock").is_file()  # the live one
    finally:
        live.kill()
        live.wait(timeout=20)
    assert not [p.name for p in run.path.iterdir() if p.name.startswith(".")]
    assert second.manifest["stages"][0]["name"] == "first"
    assert [s["name"] for s in run.stages()] == ["first", "next"]


def test_a_second_writer_in_process_waits_or_fails_with_no_wait(tmp_path: Path,
                                                                capfd: pytest.CaptureFixture[str]) -> None:
    run = _make_run(RunStore(tmp_path))
    before = run.manifest_path.read_bytes()
    proc = _holder(run.path)
    try:
        with pytest.raises(RunError, match=rf"is being written by pid {proc.pid} \(python -c"), \
                RunDir(run.path, wait=False).stage("other"):
            pass
        assert run.manifest_path.read_bytes() == before
    finally:
        proc.kill()
        proc.wait(timeout=20)
    # the holder was killed: its lock went with it, and its staging folder goes on the next open
    with run.stage("other") as st:
        (st.output_dir("extra") / "x").write_text("x")
    assert [s["name"] for s in run.stages()] == ["first", "other"]
    assert not [p.name for p in run.path.iterdir() if p.name.startswith(".")]


def test_sections_merge_by_key_against_what_this_process_read(tmp_path: Path) -> None:
    """A stage built from an older snapshot keeps the keys another writer committed since,
    and still removes the keys it dropped itself."""
    store = RunStore(tmp_path)
    run = _make_run(store)
    with run.stage("a") as st:
        st.set_section("exports", {"x.failed": {"ok": False}, "y": {"ok": True}})
    snapshot = run.manifest  # what this process builds its next section from
    other = subprocess.run([sys.executable, "-c", (
        "import sys\n"
        "from edgeship.core.runstore import RunDir\n"
        "run = RunDir(sys.argv[1])\n"
        "with run.stage('b') as st:\n"
        "    st.set_section('exports', {**run.manifest['exports'], 'z': {'ok': True}})\n"
    ), str(run.path)], capture_output=True, text=True, timeout=60)
    assert other.returncode == 0, other.stderr
    exports = dict(snapshot["exports"])
    exports.pop("x.failed")
    exports["x"] = {"ok": True}
    with run.stage("c") as st:
        st.set_section("exports", exports)
    assert run.manifest["exports"] == {"y": {"ok": True}, "z": {"ok": True}, "x": {"ok": True}}
    assert [s["name"] for s in run.stages()] == ["first", "a", "b", "c"]


# ---------------------------------------------------------------- the real CLI on a real run

_COMPRESS_WITH_BARRIER = """
import os, sys, time
from pathlib import Path

import edgeship.compression.stage as cs
from edgeship.core import runlock

barrier, me, other = Path(os.environ["BARRIER"]), os.environ["ME"], os.environ["OTHER"]
real_write, real_wait = cs.write_variant, runlock.lock_blocking


def write_variant(st, run, built, **kwargs):
    # Both processes are past their snapshot of the manifest before either commits, unless a
    # lock makes one wait (then it says so here, so the other need not sit out the timeout).
    real_write(st, run, built, **kwargs)
    (barrier / me).touch()
    deadline = time.monotonic() + 60
    while not (barrier / other).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def lock_blocking(path):
    (barrier / me).touch()
    return real_wait(path)


cs.write_variant = write_variant
runlock.lock_blocking = lock_blocking
from edgeship.cli import main

sys.argv = ["edgeship", *sys.argv[1:]]
main()
"""


@pytest.fixture()
def digits_copy(digits_run: RunDir, tmp_path: Path) -> RunDir:
    dst = tmp_path / "runs" / digits_run.path.name
    shutil.copytree(digits_run.path, dst)
    return RunDir(dst)


@pytest.mark.slow
def test_two_concurrent_compress_both_land_in_the_manifest(digits_copy: RunDir, tmp_path: Path) -> None:
    run = digits_copy
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = {}
    for me, other in (("half", "third"), ("third", "half")):
        env = {**os.environ, "BARRIER": str(barrier), "ME": me, "OTHER": other}
        procs[me] = subprocess.Popen(
            [sys.executable, "-c", _COMPRESS_WITH_BARRIER, "--runs-dir", str(run.path.parent),
             "compress", str(run.path), "--prune", "0.5" if me == "half" else "0.3", "--epochs", "1",
             "--name", me, "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    results = {me: (p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for me, p in procs.items()}
    for me, (code, _out, err) in results.items():
        assert code == 0, (me, err)
    waited = [me for me, (_c, _o, err) in results.items() if "is being written by pid" in err]
    assert len(waited) == 1, {me: err[-500:] for me, (_c, _o, err) in results.items()}
    line = next(ln for ln in results[waited[0]][2].splitlines() if "is being written" in ln)
    assert line.startswith(f"run {run.path.name} is being written by pid ")
    assert "compress" in line and line.endswith("waiting; pass --no-wait to fail instead")

    manifest = run.manifest
    assert {"half", "third"} <= set(manifest["variants"])
    assert [s["params"]["name"] for s in manifest["stages"] if s["name"] == "compress"][-2:] \
        in (["half", "third"], ["third", "half"])
    for name in ("half", "third"):
        assert (run.path / "variants" / name / "model.keras").is_file()
    _matches_manifest(run.path)
    assert not [p.name for p in run.path.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_no_wait_against_a_held_run_is_one_line_exit_2(digits_copy: RunDir) -> None:
    from clihelp import assert_one_line_error, invoke

    run = digits_copy
    before = run.manifest_path.read_bytes()
    proc = _holder(run.path)
    try:
        result = invoke(run.path.parent, "--no-wait", "compress", run.path.name, "--prune", "0.5",
                        "--epochs", "1", "--name", "blocked")
        assert_one_line_error(result, f"run {run.path.name} is being written by pid {proc.pid}",
                              "--no-wait")
    finally:
        proc.kill()
        proc.wait(timeout=20)
    assert run.manifest_path.read_bytes() == before
    assert not (run.path / "variants" / "blocked").exists()


# ---------------------------------------------------------------- issue 17: prefixes, stage clocks, --no-wait


def _shared_prefix(names: list[str]) -> str:
    """The longest start of the strings that all of them share (character by character)."""
    first = names[0]
    return next((first[:i] for i in range(len(first), 0, -1)
                 if all(n.startswith(first[:i]) for n in names)), "")


def test_an_ambiguous_prefix_names_its_candidates(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    runs = [_make_run(store, label) for label in ("alpha", "beta", "gamma")]
    prefix = _shared_prefix([r.path.name for r in runs])
    assert prefix  # the ids start with the date
    with pytest.raises(RunError) as e:
        store.resolve(prefix)
    message = str(e.value)
    assert message.startswith(f"run id prefix '{prefix}' matches 3 runs: ")
    assert all(r.path.name in message for r in runs) and "give more characters" in message
    assert "\n" not in message
    assert store.resolve(runs[1].path.name[:-2]).path == runs[1].path  # a unique prefix still resolves


def test_a_stage_begun_before_its_work_times_the_work(tmp_path: Path) -> None:
    import time

    run = _make_run(RunStore(tmp_path))
    start = run.begin()
    time.sleep(0.3)  # the work, done before the stage commits
    with run.stage("worked", start=start) as st:
        (st.output_dir("extra") / "x").write_text("x")
    stage = run.last_stage("worked")
    assert stage is not None and stage["wall_time_s"] >= 0.3
    assert stage["started"] == start.started
    with run.stage("plain"):  # without a start: timed from the block, as before
        pass
    assert run.last_stage("plain")["wall_time_s"] < 0.3


_driver_calls: list[str] = []


def _sleepy_driver(run: RunDir, _settings: object, _options: object, **_: object) -> list[dict[str, object]]:
    """A device driver whose measuring takes 0.4 s (registered by the test below)."""
    import time

    from test_bench import fake_result

    _driver_calls.append(run.path.name)
    time.sleep(0.4)
    return [fake_result(run_id=run.id)]


def test_bench_times_the_measuring_and_checks_no_wait_before_it(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The bench stage's wall time covers the driver, not only the commit; a held run with
    --no-wait fails before the driver measures anything."""
    from edgeship.devices import registry

    monkeypatch.setitem(registry.DRIVERS, "sleepy", (f"{__name__}:_sleepy_driver", "a test driver"))
    _driver_calls.clear()
    run = _make_run(RunStore(tmp_path))
    registry.bench_run(run, "sleepy")
    assert run.last_stage("bench")["wall_time_s"] >= 0.4

    before = run.manifest_path.read_bytes()
    proc = _holder(run.path)
    try:
        with pytest.raises(RunError, match=rf"is being written by pid {proc.pid}"):
            registry.bench_run(RunDir(run.path, wait=False), "sleepy")
    finally:
        proc.kill()
        proc.wait(timeout=20)
    assert _driver_calls == [run.path.name]  # the refused bench never measured
    assert run.manifest_path.read_bytes() == before


@pytest.mark.slow
def test_compress_times_its_passes_and_checks_no_wait_before_them(digits_copy: RunDir) -> None:
    import time

    from edgeship.compression.stage import CompressConfig, compress_run

    run = digits_copy
    cfg = CompressConfig(prune=0.5, epochs=1, name="timed")
    epochs: list[str] = []

    class Bar:
        def update(self, advance: int = 1, status: str = "") -> None:
            epochs.append(status)

    proc = _holder(run.path)
    try:
        with pytest.raises(RunError, match=rf"is being written by pid {proc.pid}"):
            compress_run(RunDir(run.path, wait=False), cfg, progress=Bar())
    finally:
        proc.kill()
        proc.wait(timeout=20)
    assert epochs == []  # refused before any fine-tuning, not after it
    assert "timed" not in run.manifest.get("variants", {})

    t0 = time.perf_counter()
    compress_run(run, cfg, progress=Bar())
    elapsed = time.perf_counter() - t0
    assert epochs  # it fine-tuned this time
    stage = run.last_stage("compress")
    assert stage["params"]["name"] == "timed"
    assert stage["wall_time_s"] >= 0.8 * elapsed, (stage["wall_time_s"], elapsed)
