"""The reference suite: three models through every host backend in one run, as ratios.

    python -m edgeship.benchmarks.suite [--out DIR] [--runs 200] [--warmup 20] [--trials 64] [--no-tvm]

Models: the digits CNN and a wine-table MLP (trained briefly by ``edgeship train``'s library
call) and MobileNetV2 alpha 0.35 at 96x96x3 with random weights (a hand-built run: speed does
not depend on the weights, so its int8 export is validated with an accuracy tolerance of 1).
Backends: TFLite float32 and int8 (ai-edge-litert), onnxruntime float32, TVM untuned and tuned
(MetaSchedule, ``--trials``; the tuned build comes from exporting a copy of the run with trials,
and the artifact records whether tuning shipped the tuned build).

Printed: p50 per backend at 1 thread and the ratios TFLite int8/float32, onnxruntime/TFLite,
TVM tuned/untuned, TVM tuned/TFLite; harness overhead (the harness's timing loop against a bare
``invoke`` loop over the same interpreter, alternating rounds in one process); and cold start
(a fresh process that imports edge_runtime, loads and predicts once, against a bare
ai-edge-litert script that does the same) in wall time and peak RSS. Only ratios measured in
this one invocation are comparable: the machine is shared and timings drift.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.2
MODELS = ("digits", "tabular", "mobilenet")
BACKENDS = (("tflite-float32", "TFLite f32"), ("tflite-int8", "TFLite i8"), ("onnx-float32", "ORT f32"),
            ("tvm-untuned", "TVM untuned"), ("tvm-tuned", "TVM tuned"))


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the three runs


def make_runs(store: Any, models: list[str]) -> dict[str, Any]:
    from edgeship.training.stage import TrainConfig, train

    runs = {}
    if "digits" in models:
        _say("suite: training the digits CNN")
        runs["digits"] = train(store, TrainConfig(epochs=20, patience=5, seed=0)).run
    if "tabular" in models:
        _say("suite: training the wine MLP")
        runs["tabular"] = train(store, TrainConfig(dataset="wine", epochs=40, patience=8, seed=0)).run
    if "mobilenet" in models:
        _say("suite: building MobileNetV2 alpha 0.35, 96x96x3, random weights")
        runs["mobilenet"] = mobilenet_run(store)
    return runs


def mobilenet_run(store: Any, n_train: int = 64, n_test: int = 32, classes: int = 10) -> Any:
    """A run laid out as docs/contracts.md says, around a random-weight MobileNetV2."""
    from edgeship.training.keras_env import keras
    from edgeship.training.models import build_model, count_params

    keras().utils.set_random_seed(0)
    model = build_model("mobilenetv2", (96, 96, 3), classes)
    spec = {"kind": "image", "height": 96, "width": 96, "channels": 3, "color_mode": "RGB",
            "raw_range": [0, 255], "scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 255, size=(n_train + n_test, 96, 96, 3)).astype(np.float32)
    x = ((raw / 255 - 0.5) / 0.25).astype(np.float32)
    # Labels are the model's own answers: accuracy is meaningless for random weights, and this
    # keeps the export validation's comparison well defined.
    y = np.asarray(model.predict(x, verbose=0)).argmax(axis=1).astype(np.int64)
    labels = [str(i) for i in range(classes)]
    with store.new_run("mobilenetv2-96-random", seed=0) as run, \
            run.stage("train", {"by": "benchmarks.suite", "weights": "random"}) as st:
        data = st.output_dir("data")
        np.savez_compressed(data / "splits.npz", x_train=x[:n_train], y_train=y[:n_train],
                            x_val=x[:0], y_val=y[:0], x_test=x[n_train:], y_test=y[n_train:])
        np.savez_compressed(data / "raw_test.npz", x=raw[n_train:], y=y[n_train:])
        model.save(st.output_dir("model") / "model.keras")
        st.set_section("data", {"dataset": "synthetic-96", "kind": "image", "labels": labels,
                                "input": {"shape": [96, 96, 3], "dtype": "float32"},
                                "preprocessing": spec})
        st.set_section("model", {"name": "mobilenetv2", "options": {"alpha": 0.35},
                                 "params": count_params(model)})
    return run


def export_all(name: str, run: Any, tvm: bool, trials: int, cache: Path) -> dict[str, Path]:
    """Artifact folders by backend key; TVM tuned comes from a copy of the run exported with trials."""
    from edgeship.core.runstore import RunDir
    from edgeship.export.stage import export_run
    from edgeship.export.validate import ValidationConfig

    loose = ValidationConfig(max_accuracy_drop=1.0, warn_accuracy_drop=1.0)
    validation = loose if name == "mobilenet" else ValidationConfig()
    _say(f"suite: {name}: exporting TFLite float32/int8 and ONNX float32")
    export_run(run, formats="tflite", quantize="float32,int8", validation=validation)
    export_run(run, formats="onnx", quantize="float32", validation=validation)
    base = run.path / "exports" / "base"
    out = {k: base / k for k in ("tflite-float32", "tflite-int8", "onnx-float32")}
    if tvm:
        _say(f"suite: {name}: TVM untuned build")
        export_run(run, formats="tvm", quantize="float32", trials=0, validation=validation, cache_dir=cache)
        out["tvm-untuned"] = base / "tvm-host"
        if trials > 0:
            copy = RunDir(cache.parent / "tuned-runs" / run.path.name)
            if copy.path.exists():
                shutil.rmtree(copy.path)
            shutil.copytree(run.path, copy.path, ignore=shutil.ignore_patterns("bench", "report.*"))
            _say(f"suite: {name}: TVM tuned build ({trials} MetaSchedule trials; minutes on 2 cores)")
            export_run(copy, formats="tvm", quantize="float32", trials=trials, validation=validation,
                       cache_dir=cache, log=lambda m: _say(f"  {m}") if "trials" in m else None)
            out["tvm-tuned"] = copy.path / "exports" / "base" / "tvm-host"
    missing = {k: p for k, p in out.items() if not (p / "artifact.json").is_file()}
    for k, p in missing.items():  # failed validation: time the folder kept aside, say so
        failed = p.with_name(p.name + ".failed")
        if failed.is_dir():
            _say(f"suite: {name}: {k} failed export validation; timing it anyway ({failed})")
            out[k] = failed
        else:
            del out[k]
    return out


# ---------------------------------------------------------------- measurements


def time_backends(arts: dict[str, Path], runs: int, warmup: int) -> dict[str, dict[str, Any]]:
    from edgeship.benchmarks.host import bench_artifact

    results = {}
    for key, folder in arts.items():
        r = bench_artifact(folder, runs=runs, warmup=warmup, threads=1)
        r["artifact"] = str(folder)
        results[key] = r
    return results


_HARNESS = """
import json, sys, time
from edge_runtime.model import EdgeModel
from edge_runtime.timing import percentile, time_calls
path, runs, warmup, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
m = EdgeModel.load(path, threads=1)
invoke = m.backend.invoker(m.prepare(m.preprocess(m.example_raw(1))))
bare_invoke = invoke.__self__.invoke  # the very interpreter the harness times
def bare(n, fn=bare_invoke, clock=time.perf_counter_ns):
    s = [0] * n
    for i in range(n):
        t0 = clock()
        fn()
        s[i] = clock() - t0
    return s
h, b = [], []
for r in range(rounds):  # alternate which goes first: neither gets the warmer caches every time
    for which in ((0, 1) if r % 2 == 0 else (1, 0)):
        if which == 0:
            h.append(percentile(time_calls(invoke, runs, warmup), 50))
        else:
            for _ in range(warmup):
                bare_invoke()
            b.append(percentile(bare(runs), 50))
print(json.dumps({"harness_ns": h, "bare_ns": b}))
"""


def harness_overhead(tflite_dir: Path, runs: int, warmup: int, rounds: int = 7) -> dict[str, float]:
    """Harness p50 / bare-loop p50 over the same interpreter, median of alternating rounds.

    The harness is ``edge_runtime.timing.time_calls`` over ``EdgeModel``'s invoker, exactly what
    ``benchmark`` times; the bare loop reads the clock around the same interpreter's ``invoke``.
    """
    done = subprocess.run([sys.executable, "-c", _HARNESS, str(tflite_dir), str(runs), str(warmup),
                           str(rounds)], capture_output=True, text=True, env=_env(), check=True,
                          timeout=900)
    d = json.loads(done.stdout.strip().splitlines()[-1])
    h, b = statistics.median(d["harness_ns"]), statistics.median(d["bare_ns"])
    return {"harness_p50_ms": h / 1e6, "bare_p50_ms": b / 1e6, "ratio": h / b}


_COLD_EDGE = """
import sys
import numpy as np
from edge_runtime import EdgeModel
m = EdgeModel.load(sys.argv[1], threads=1)
m.predict(np.load(sys.argv[2]))
"""

_COLD_BARE = """
import sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
it = Interpreter(model_path=sys.argv[1], num_threads=1)
it.allocate_tensors()
inp, out = it.get_input_details()[0], it.get_output_details()[0]
it.set_tensor(inp["index"], np.load(sys.argv[2]))
it.invoke()
it.get_tensor(out["index"])
"""


# Runs the cold-start children from a small process: Linux keeps a process's peak RSS across
# exec, so a child forked from this (TensorFlow-sized) process would report our peak, not its own.
_LAUNCHER = """
import json, os, subprocess, sys, time
jobs, rounds = json.loads(sys.argv[1]), int(sys.argv[2])
def child(argv):
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status):
        sys.exit("cold-start child failed: " + err.strip()[-400:])
    return wall, usage.ru_maxrss / 1024
for argv in jobs.values():
    child(argv)  # warm the page cache for both
out = {k: {"s": [], "mb": []} for k in jobs}
for _ in range(rounds):
    for k, argv in jobs.items():
        wall, mb = child(argv)
        out[k]["s"].append(wall)
        out[k]["mb"].append(mb)
print(json.dumps(out))
"""


def cold_start(tflite_dir: Path, work: Path, rounds: int = 7) -> dict[str, float]:
    """edge_runtime (raw input, sha256 check, preprocess) against bare ai-edge-litert (the model
    input ready in a .npy), each a fresh process; medians of alternating rounds (wall time of the
    whole process, peak RSS from wait4)."""
    from edge_runtime import EdgeModel

    m = EdgeModel.load(tflite_dir, threads=1)
    raw = m.example_raw(1)
    ready = m.prepare(m.preprocess(raw))
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "raw.npy", np.asarray(raw))
    np.save(work / "ready.npy", ready)
    jobs = {"edge": ["-c", _COLD_EDGE, str(tflite_dir), str(work / "raw.npy")],
            "bare": ["-c", _COLD_BARE, str(m.model_file), str(work / "ready.npy")]}
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, json.dumps(jobs), str(rounds)], env=_env(),
                          capture_output=True, text=True, check=False, timeout=900)
    if done.returncode:
        raise RuntimeError(done.stderr.strip()[-400:])
    d = json.loads(done.stdout.strip().splitlines()[-1])
    et, bt = statistics.median(d["edge"]["s"]), statistics.median(d["bare"]["s"])
    em, bm = statistics.median(d["edge"]["mb"]), statistics.median(d["bare"]["mb"])
    return {"edge_s": et, "bare_s": bt, "time_ratio": et / bt,
            "edge_rss_mb": em, "bare_rss_mb": bm, "memory_ratio": em / bm}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EDGESHIP_DEVICE", "EDGESHIP_EMULATED")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


# ---------------------------------------------------------------- printing


def _ratio(a: dict[str, Any], b: dict[str, Any], ka: str, kb: str) -> float | None:
    if ka in a and kb in b:
        return a[ka]["latency_ms"]["p50"] / b[kb]["latency_ms"]["p50"]
    return None


def summarize(timings: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out = {}
    for model, t in timings.items():
        out[model] = {
            "p50_ms": {k: r["latency_ms"]["p50"] for k, r in t.items()},
            "tflite_int8/float32": _ratio(t, t, "tflite-int8", "tflite-float32"),
            "onnxruntime/tflite": _ratio(t, t, "onnx-float32", "tflite-float32"),
            "tvm_tuned/untuned": _ratio(t, t, "tvm-tuned", "tvm-untuned"),
            "tvm_tuned/tflite": _ratio(t, t, "tvm-tuned", "tflite-float32"),
        }
    return out


def print_report(info: dict[str, Any]) -> None:
    def x(v: float | None) -> str:
        return "not measured" if v is None else f"{v:.2f}x"

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    dev = info["device"]
    print(f"edgeship reference suite: {dev['cpu_model']} ({dev['arch']}, {dev['cores']} cores), "
          f"{dev['os']}, Python {dev['python']}")
    print(f"p50 of {info['runs']} timed invokes after {info['warmup']} warm-up, 1 thread, each in a fresh "
          f"process; TVM tuning trials: {info['trials'] if info['tvm'] else 'TVM not measured'}")
    print()
    head = f"{'model':<10}" + "".join(f"{label:>13}" for _, label in BACKENDS)
    print(head + "   (p50 ms)")
    for model, s in info["summary"].items():
        print(f"{model:<10}" + "".join(f"{ms(s['p50_ms'].get(k)):>13}" for k, _ in BACKENDS))
    print()
    cols = ("tflite_int8/float32", "onnxruntime/tflite", "tvm_tuned/untuned", "tvm_tuned/tflite")
    print(f"{'model':<10}" + "".join(f"{c:>22}" for c in cols)
          + "   (ratio of p50; < 1: the first is faster)")
    for model, s in info["summary"].items():
        print(f"{model:<10}" + "".join(f"{x(s[c]):>22}" for c in cols))
    for model, note in info.get("tvm_notes", {}).items():
        print(f"  {model}: {note}")
    print()
    print(f"harness overhead (harness p50 / bare invoke loop p50, same interpreter, TFLite float32; "
          f"target <= {TARGET}x):")
    for model, h in info["harness"].items():
        ok = "ok" if h["ratio"] <= TARGET else "OVER TARGET"
        print(f"  {model:<10} {h['harness_p50_ms']:.4f} ms / {h['bare_p50_ms']:.4f} ms = "
              f"{h['ratio']:.3f}x  {ok}")
    print(f"cold start (fresh process: import, load, predict once; edge_runtime / bare ai-edge-litert, "
          f"TFLite float32; target <= {TARGET}x both):")
    for model, c in info["cold"].items():
        ok = "ok" if max(c["time_ratio"], c["memory_ratio"]) <= TARGET else "OVER TARGET"
        print(f"  {model:<10} time {c['edge_s'] * 1000:.0f} ms / {c['bare_s'] * 1000:.0f} ms = "
              f"{c['time_ratio']:.2f}x   peak RSS {c['edge_rss_mb']:.1f} MB / {c['bare_rss_mb']:.1f} MB = "
              f"{c['memory_ratio']:.2f}x  {ok}")
    print()
    print(f"runs: {', '.join(info['runs_dirs'])}  (edgeship report <run> for each)")


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgeship.benchmarks.suite",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="where to keep the runs (default: a temporary folder)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--trials", type=int, default=64,
                   help="TVM MetaSchedule trials per model (0: untuned only)")
    p.add_argument("--no-tvm", action="store_true", help="skip TVM")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds for overhead and cold start")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or args.runs < 1 or args.warmup < 0 or args.trials < 0 or args.rounds < 1:
        p.error(f"unknown model {bad[0]}" if bad else "runs >= 1, warmup >= 0, trials >= 0, rounds >= 1")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from edge_runtime.timing import device_facts
    from edgeship.benchmarks.store import save_results
    from edgeship.core.runstore import RunStore

    out = args.out or Path(tempfile.mkdtemp(prefix="edgeship-suite-"))
    store = RunStore(out / "runs")
    cache = out / "tvm-cache"
    tvm = not args.no_tvm
    if tvm:
        try:
            import tvm as _tvm  # noqa: F401
        except ImportError:
            _say("suite: TVM is not installed; TVM not measured")
            tvm = False
    t_start = time.perf_counter()
    runs = make_runs(store, models)
    timings, harness, cold, tvm_notes = {}, {}, {}, {}
    for name, run in runs.items():
        arts = export_all(name, run, tvm, args.trials, cache)
        tuned = arts.get("tvm-tuned")
        if tuned is not None:
            tuning = (json.loads((tuned / "artifact.json").read_text()).get("tuning") or {})
            if tuning.get("shipped") != "tuned":
                tvm_notes[name] = (f"TVM tuning shipped the untuned build ({tuning.get('note')}); export's "
                                   f"own timing tuned {tuning.get('tuned_ms')} ms vs untuned "
                                   f"{tuning.get('untuned_ms')} ms")
        _say(f"suite: {name}: timing {', '.join(arts)}")
        timings[name] = time_backends(arts, args.runs, args.warmup)
        stored = [r for k, r in timings[name].items() if k != "tvm-tuned"]
        for r in stored:
            r["artifact"] = str(Path(r["artifact"]).relative_to(run.path))
        save_results(run, stored, label="benchmarks.suite")
        _say(f"suite: {name}: harness overhead and cold start")
        harness[name] = harness_overhead(arts["tflite-float32"], args.runs, args.warmup, args.rounds)
        cold[name] = cold_start(arts["tflite-float32"], out / "cold" / name, args.rounds)
    info = {
        "device": device_facts(), "runs": args.runs, "warmup": args.warmup, "trials": args.trials,
        "tvm": tvm, "summary": summarize(timings), "harness": harness, "cold": cold,
        "tvm_notes": tvm_notes, "runs_dirs": [str(r.path) for r in runs.values()],
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print_report(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
