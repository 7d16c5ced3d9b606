"""Every bad input, per command family, through the real CLI: exit 2, one line, nothing changed.

Each row is what a user might type. The assertion is the same for all of them: exit code 2,
exactly one line on stderr (``error: ...``, naming the problem), no traceback, and the runs
folder byte-for-byte as it was (a hash of the tree; the run's ``.lock`` file is left out: by
design it names the last writer that took the lock). The needles check that the line names
the right thing. One small exported run and the input files are made once for the module.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from _models import copy_run
from clihelp import invoke

from edgeship.core.runstore import LOCK, RunDir

# -- the world: one exported run, one tabular run, and the bad files --------------------------


def _files(root: Path) -> Path:
    """Every bad file the table names, under ``root``."""
    from PIL import Image

    root.mkdir()
    rng = np.random.default_rng(0)
    n = 60
    frame = pd.DataFrame({"a": rng.normal(size=n).round(3), "b": rng.integers(0, 9, n),
                          "tier": rng.choice(["x", "y"], n), "y": ["p", "q"] * (n // 2)})
    frame.to_csv(root / "good.csv", index=False)
    for name, value in (("inf", "inf"), ("neginf", "-inf"), ("nan", "nan"), ("huge", "1e999")):
        text = (root / "good.csv").read_text().splitlines()
        cells = text[4].split(",")
        cells[0] = value
        text[4] = ",".join(cells)
        (root / f"{name}.csv").write_text("\n".join(text) + "\n")
    frame.assign(y="p").to_csv(root / "single.csv", index=False)
    frame.head(8).to_csv(root / "tiny.csv", index=False)
    (root / "latin1.csv").write_bytes("a,caf\xe9,y\n1,2,p\n".encode("latin-1"))
    (root / "empty.csv").write_bytes(b"")
    (root / "x.csv").mkdir()  # a folder named like a table
    (root / "no-images" / "a").mkdir(parents=True)
    for folder in ("bomb", "floats"):  # two classes of good images, plus one bad file each
        for cls in "ab":
            (root / folder / cls).mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 255, (8, 8)).astype(np.uint8)).save(
                    root / folder / cls / f"{i}.png")
    # A 20000 x 20000 greyscale PNG: 390 KB on disk, 400 megapixels decoded.
    Image.new("L", (20000, 20000)).save(root / "bomb/a/huge.png", optimize=True)
    Image.fromarray(rng.normal(size=(8, 8)).astype(np.float32)).save(root / "floats/a/f.tiff")
    # edge_runtime predict inputs
    np.save(root / "empty.npy", np.zeros((0,), np.float32))
    np.save(root / "empty-batch.npy", np.zeros((0, 8, 8), np.float32))
    np.savez(root / "renamed.npz", x=np.zeros((8, 8)))
    os.replace(root / "renamed.npz", root / "renamed.npy")
    (root / "zero-bytes.npy").write_bytes(b"")
    (root / "garbage.npy").write_bytes(b"not numpy at all" * 4)
    np.save(root / "objects.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    np.save(root / "nan.npy", np.full((8, 8), np.nan, np.float32))
    Image.new("L", (10000, 10000)).save(root / "bomb.png", optimize=True)  # over the warning limit
    Image.fromarray(rng.normal(size=(8, 8)).astype(np.float32)).save(root / "float.tiff")
    (root / "notes.keras").write_text("hello")
    return root


@pytest.fixture(scope="module")
def world(digits_run: RunDir, tabular_run: RunDir,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from edgeship.export.stage import ExportConfig, export_run

    base = tmp_path_factory.mktemp("bad-inputs")
    runs = base / "runs"
    runs.mkdir()
    run = copy_run(digits_run, runs)
    export_run(run, ExportConfig(formats="tflite", quantize="float32"))
    tab = copy_run(tabular_run, base / "tabular")
    export_run(tab, ExportConfig(formats="tflite", quantize="float32"))
    files = _files(base / "files")
    subs = {"{run}": run.id, "{files}": str(files), "{art}": str(run.path / "exports/base/tflite-float32"),
            "{tab}": str(tab.path / "exports/base/tflite-float32"), "{nl}": "a\nb"}
    return {"runs": runs, "run": run, "files": files, "subs": subs, "roots": [runs, tab.path.parent]}


def _expand(arg: str, subs: dict[str, str]) -> str:
    for key, value in subs.items():
        arg = arg.replace(key, value)
    return arg


def tree_hash(*roots: Path) -> str:
    """sha256 over every folder and file (path and bytes) under ``roots``, lock files aside."""
    h = hashlib.sha256()
    for root in roots:
        for dirpath, dirs, files in sorted(os.walk(root)):
            dirs.sort()
            h.update(f"d {Path(dirpath).relative_to(root)}\n".encode())
            for name in sorted(files):
                if name == LOCK:
                    continue
                path = Path(dirpath) / name
                h.update(f"f {path.relative_to(root)}\n".encode())
                h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def assert_clean_error(code: int, stderr: str, needles: list[str]) -> None:
    """Exit 2, exactly one non-empty line on stderr, ``error: ...`` naming every needle."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2, (code, stderr)
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _check_cli(world: dict[str, Any], args: list[str], needles: list[str]) -> None:
    before = tree_hash(*world["roots"])
    result = invoke(world["runs"], *[_expand(a, world["subs"]) for a in args])
    assert_clean_error(result.exit_code, result.stderr, needles)
    assert tree_hash(*world["roots"]) == before, "a failed command changed the runs folder"


def _ids(table: list[Any]) -> list[str]:
    rows = [row.values if hasattr(row, "values") else row for row in table]
    return [" ".join(args).replace("{files}/", "") or "-" for args, _ in rows]


# -- train -------------------------------------------------------------------------------------

TRAIN = [
    (["--dataset", "missing.csv", "--target", "y"], ["no such file", "missing.csv"]),
    (["--dataset", "{files}/x.csv", "--target", "y"], ["is a folder", "x.csv"]),
    (["--dataset", "{files}/good.csv", "--target", "nope"], ["no column 'nope'", "a, b, tier, y"]),
    (["--dataset", "{files}/good.csv"], ["--target"]),
    (["--dataset", "{files}/single.csv", "--target", "y"], ["single class"]),
    (["--dataset", "{files}/tiny.csv", "--target", "y"], ["fewer than the split needs"]),
    (["--dataset", "{files}/inf.csv", "--target", "y"], ["column 'a'", "non-finite", "'inf'", "line 5"]),
    (["--dataset", "{files}/neginf.csv", "--target", "y"], ["column 'a'", "'-inf'"]),
    (["--dataset", "{files}/nan.csv", "--target", "y"], ["column 'a'", "'nan'"]),
    (["--dataset", "{files}/huge.csv", "--target", "y"], ["column 'a'", "non-finite"]),
    (["--dataset", "{files}/latin1.csv", "--target", "y"], ["cannot read", "UTF-8"]),
    (["--dataset", "{files}/empty.csv", "--target", "y"], ["cannot read", "empty.csv"]),
    (["--dataset", "{files}/good.csv", "--target", "y", "--time-column", "tier"],
     ["does not parse as dates or numbers"]),
    (["--dataset", "{files}/good.csv", "--target", "y", "--time-column", "y"], ["same column"]),
    (["--dataset", "{files}/no-images"], ["has no images"]),
    (["--dataset", "{files}/bomb"], ["refusing", "huge.png", "decompression-bomb"]),
    (["--dataset", "{files}/floats"], ["f.tiff", "float image"]),
    (["--dataset", "mnist"], ["unknown dataset 'mnist'", "digits"]),
    (["--dataset", "digits", "--target", "y"], ["--target", "CSV files"]),
    (["--model", "resnet"], ["unknown model 'resnet'", "cnn, dscnn"]),
    (["--epochs", "0"], ["--epochs", "allowed: 1 <= x"]),
    (["--width", "nan"], ["--width", "not a finite number"]),
    (["--width", "inf"], ["--width", "not a finite number"]),
    (["--width", "0"], ["--width"]),
    (["--alpha", "-1"], ["--alpha", "allowed: 0 < x <= 2"]),
    (["--seed", "-1"], ["--seed", "allowed: 0 <= x <= 4294967295"]),
    (["--learning-rate", "-1"], ["--learning-rate", "allowed: 0 < x <= 10"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--patience", "-1"], ["--patience"]),
    (["--test-fraction", "1"], ["--test-fraction", "allowed: 0 < x < 1"]),
    (["--val-fraction", "nan"], ["--val-fraction"]),
    (["--image-size", "0"], ["--image-size", "not a size"]),
    (["--image-size", "big"], ["--image-size", "not a size"]),
    (["--image-size", "100000"], ["--image-size", "side <= 1024"]),
    (["--class-weight", "heavy"], ["--class-weight"]),
]


@pytest.mark.parametrize(("args", "needles"), TRAIN, ids=_ids(TRAIN))
def test_train(world: dict[str, Any], args: list[str], needles: list[str]) -> None:
    _check_cli(world, ["train", *args], needles)


# -- compress ------------------------------------------------------------------------------------

COMPRESS = [
    (["--prune", "1.0"], ["--prune", "allowed: 0 <= x < 1"]),
    (["--prune", "-0.1"], ["--prune", "allowed: 0 <= x < 1"]),
    (["--prune", "nan"], ["--prune", "not a finite number"]),
    (["--cluster", "1"], ["--cluster", "allowed: 2 <= x <= 256"]),
    (["--distill", "--student", "resnet"], ["unknown model", "cnn"]),
    (["--search", "--accuracy-budget", "-1"], ["--accuracy-budget", "allowed: 0 <= x <= 100"]),
    (["--batch-size", "0", "--prune", "0.5"], ["--batch-size", "allowed: 1 <= x"]),
    (["--distill", "--temperature", "nan"], ["--temperature", "not a finite number"]),
    (["--distill", "--alpha", "-1"], ["--alpha", "allowed: 0 <= x <= 1"]),
    (["--learning-rate", "-0.1", "--prune", "0.5"], ["--learning-rate", "allowed: 0 < x <= 10"]),
    (["--search", "--time-budget", " "], ["--time-budget", "is not a duration"]),
    (["--search", "--time-budget", "nan"], ["--time-budget", "is not a duration"]),
    (["--search", "--time-budget", "-5m"], ["--time-budget", "is not a duration"]),
    (["--search", "--time-budget", "inf"], ["--time-budget", "is not a duration"]),
    ([], ["no compression pass given"]),
    (["--from", "nope", "--prune", "0.5"], ["no variant 'nope'", "base"]),
    (["--quantize", "int4"], ["--quantize"]),
    (["--recipe", "nope"], ["unknown recipe 'nope'"]),
]


@pytest.mark.parametrize(("args", "needles"), COMPRESS, ids=_ids(COMPRESS))
def test_compress(world: dict[str, Any], args: list[str], needles: list[str]) -> None:
    _check_cli(world, ["compress", "{run}", *args], needles)


COMPRESS_MODEL = [
    (["--model", "{files}/notes.keras", "--dataset", "digits", "--prune", "0.5"], ["not a Keras model"]),
    (["--model", "{files}/good.csv", "--dataset", "digits", "--prune", "0.5"], ["not a Keras model"]),
    (["--model", "{files}/missing.keras", "--dataset", "digits", "--prune", "0.5"], ["missing.keras"]),
]


@pytest.mark.parametrize(("args", "needles"), COMPRESS_MODEL, ids=_ids(COMPRESS_MODEL))
def test_compress_own_model(world: dict[str, Any], args: list[str], needles: list[str]) -> None:
    _check_cli(world, ["compress", *args], needles)


# -- export --------------------------------------------------------------------------------------

EXPORT = [
    (["--trials", "-3"], ["--trials", "allowed: 0 <= x"]),
    (["--time-budget", "1x"], ["--time-budget", "is not a duration"]),
    (["--time-budget", " "], ["--time-budget", "is not a duration"]),
    (["--time-budget", "nan"], ["--time-budget", "is not a duration"]),
    (["--format", "pytorch"], ["pytorch"]),
    (["--format", "tflite", "--quantize", "int3"], ["int3"]),
    (["--variant", "nope"], ["nope"]),
    (["--format", "tvm", "--target", "cray"], ["cray", "rpi4"]),
    (["--format", "tflite", "--io", "int4"], ["int4"]),
]


@pytest.mark.parametrize(("args", "needles"), EXPORT, ids=_ids(EXPORT))
def test_export(world: dict[str, Any], args: list[str], needles: list[str]) -> None:
    _check_cli(world, ["export", "{run}", *args], needles)


# -- bench ---------------------------------------------------------------------------------------

BENCH = [
    (["--port", "70000"], ["--port", "allowed: 1 <= x <= 65535"]),
    (["--threads", "0"], ["threads must be 1 or more"]),
    (["--threads", "two"], ["threads"]),
    (["--runs", "0"], ["--runs"]),
    (["--rounds", "0"], ["--rounds"]),
    (["--warmup", "-1"], ["--warmup"]),
    (["--on", "mars"], ["--on"]),
    (["--format", "pytorch"], ["pytorch"]),
    (["--variant", "nope"], ["nope"]),
    (["--on", "pi"], ["--host"]),
    (["--on", "pi", "--emulated", "--host", "pi@pi"], ["--emulated"]),
]


@pytest.mark.parametrize(("args", "needles"), BENCH, ids=_ids(BENCH))
def test_bench(world: dict[str, Any], args: list[str], needles: list[str]) -> None:
    _check_cli(world, ["bench", "{run}", *args], needles)


# -- deploy (all refused before any connection) --------------------------------------------------

DEPLOY = [
    ([], ["--host USER@HOST", "--emulated"]),
    (["--emulated", "--host", "pi@pi"], ["--emulated"]),
    (["--host", "pi@pi", "--format", "onnx-int8"], ["onnx-int8"]),
    (["--host", "pi@pi", "--quantize", "int3"], ["int3"]),
    (["--host", "pi@pi", "--variant", "nope"], ["nope"]),
    (["--host", "-oProxyCommand=touch /tmp/x"], ["bad SSH host"]),
    (["--host", "pi@pi", "--port", "0"], ["--port"]),
    (["--host", "pi@pi", "--identity", "{files}/no-such-key"], ["no-such-key"]),
    (["--host", "pi@pi", "--remote-dir", "{nl}"], ["bad remote path"]),
    (["--host", "pi@pi", "--bench", "--threads", "0"], ["threads must be 1 or more"]),
    (["--host", "pi@pi", "--bench", "--runs", "0"], ["--runs"]),
]


@pytest.mark.parametrize(("args", "needles"), DEPLOY, ids=_ids(DEPLOY))
def test_deploy(world: dict[str, Any], args: list[str], needles: list[str]) -> None:
    _check_cli(world, ["deploy", "pi", "{run}", *args], needles)


# -- report, show, demo, run ---------------------------------------------------------------------

OTHERS = [
    (["report", "no-such-run"], ["no run 'no-such-run'"]),
    (["report", "{run}", "--accuracy-budget", "-1"], ["--accuracy-budget"]),
    (["report", "{run}", "--accuracy-budget", "nan"], ["--accuracy-budget"]),
    (["report", "{run}", "--format", "pdf"], ["--format"]),
    (["show", "no-such-run"], ["no run 'no-such-run'"]),
    (["demo", "{run}"], ["web"]),
    (["demo", "{run}", "--port", "70000"], ["--port"]),
    (["demo", "{run}", "--quantize", "int3"], ["--quantize"]),
    (["demo", "no-such-run"], ["no run 'no-such-run'"]),
    (["run", "--runs", "0"], ["--runs", "allowed: 1 <= x"]),
    (["run", "--epochs", "0"], ["--epochs"]),
    (["run", "--seed", "-1"], ["--seed"]),
    (["run", "--tvm-trials", "-1"], ["--tvm-trials"]),
    (["run", "--dataset", "mnist", "--no-browser"], ["unknown dataset 'mnist'"]),
    (["run", "--pi", "-oProxyCommand=touch /tmp/x"], ["--pi", "bad SSH host"]),
    (["run", "--pi", "pi@host name"], ["--pi", "bad SSH host"]),
]


@pytest.mark.parametrize(("args", "needles"), OTHERS, ids=_ids(OTHERS))
def test_report_show_demo_run(world: dict[str, Any], args: list[str], needles: list[str]) -> None:
    _check_cli(world, args, needles)


# -- python -m edge_runtime predict (the device's CLI) ---------------------------------------------

PREDICT = [
    (["{art}", "{files}/empty.npy"], ["empty array"]),
    (["{art}", "{files}/empty-batch.npy"], ["empty array"]),
    (["{art}", "{files}/renamed.npy"], [".npz archive", "numpy.save"]),
    (["{art}", "{files}/zero-bytes.npy"], ["not a numeric .npy"]),
    (["{art}", "{files}/garbage.npy"], ["not a numeric .npy"]),
    (["{art}", "{files}/objects.npy"], ["not a numeric .npy"]),
    (["{art}", "{files}/nan.npy"], ["NaN"]),
    (["{art}", "{files}/bomb.png"], ["refusing", "decompression-bomb"]),
    (["{art}", "{files}/bomb/a/huge.png"], ["refusing", "decompression-bomb"]),
    (["{art}", "{files}/float.tiff"], ["float image"]),
    (["{art}", "{files}/x.csv"], ["is a folder"]),
    (["{art}", "{files}/missing.npy"], ["does not exist"]),
    (["{art}", "{files}/good.csv"], ["tabular model"]),
    (["{art}", "{files}/empty.npy", "--top", "0"], ["--top"]),
    (["{tab}", "{files}/latin1.csv"], ["not UTF-8"]),
    (["{tab}", "{files}/empty.csv"], ["lacks column"]),
    (["{tab}", "{files}/renamed.npy"], [".npz archive"]),
    (["{tab}", "{files}/empty.npy"], ["empty array"]),
    (["{files}", "{files}/empty.npy"], ["artifact.json"]),
]


@pytest.mark.parametrize(("args", "needles"), PREDICT, ids=_ids(PREDICT))
def test_edge_runtime_predict(world: dict[str, Any], args: list[str], needles: list[str],
                              capsys: pytest.CaptureFixture[str]) -> None:
    """``edge_runtime.cli.main``: what ``python -m edge_runtime`` runs, in this process."""
    from edge_runtime.cli import main

    before = tree_hash(*world["roots"], world["files"])
    code = main(["predict", *[_expand(a, world["subs"]) for a in args]])
    assert_clean_error(code, capsys.readouterr().err, needles)
    assert tree_hash(*world["roots"], world["files"]) == before


def test_edge_runtime_predict_as_a_process(world: dict[str, Any]) -> None:
    """The same, as a device runs it: a separate ``python -m edge_runtime`` process."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "predict", world["subs"]["{art}"],
                           str(world["files"] / "renamed.npy")], capture_output=True, text=True)
    assert_clean_error(proc.returncode, proc.stderr, [".npz archive"])


def test_tree_hash_sees_a_change(world: dict[str, Any], tmp_path: Path) -> None:
    """The run-unchanged check is not vacuous: a new file, or a changed byte, changes the hash."""
    root = tmp_path / "t"
    shutil.copytree(world["run"].path / "exports", root)
    before = tree_hash(root)
    (root / "x").mkdir()
    assert tree_hash(root) != before
    (root / "x").rmdir()
    art = next(root.rglob("artifact.json"))
    art.write_text(json.dumps({**json.loads(art.read_text()), "bytes": -1}))
    assert tree_hash(root) != before
