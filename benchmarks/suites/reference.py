"""The reference suite: three models through every host backend in one run, as ratios.

    python -m edgeship.benchmarks.suites.reference [--out DIR] [--models digits,tabular,mobilenet]
        [--runs 200] [--warmup 20] [--trials 64] [--no-tvm] [--rounds 7] [--epochs N] [--json]
    python -m edgeship.benchmarks.suites.reference --smoke   # digits only, no TVM, a few calls

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
ai-edge-litert script that does the same) in wall time and peak RSS (``suites/coldstart.py``).
Only ratios measured in this one invocation are comparable: the machine is shared and timings
drift.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.timing import device_facts
from edgeship.benchmarks.store import save_results
from edgeship.benchmarks.suites.coldstart import cold_start, harness_overhead
from edgeship.benchmarks.suites.smoke import parse_args
from edgeship.core.runstore import RunDir, RunStore
from edgeship.training.keras_env import keras

TARGET = 1.2
MODELS = ("digits", "tabular", "mobilenet")
BACKENDS = (("tflite-float32", "TFLite f32"), ("tflite-int8", "TFLite i8"), ("onnx-float32", "ORT f32"),
            ("tvm-untuned", "TVM untuned"), ("tvm-tuned", "TVM tuned"))


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the three runs


def make_runs(store: Any, models: list[str], epochs: int | None = None) -> dict[str, Any]:
    """The runs by model name; ``epochs`` overrides both trained models' (20 digits, 40 wine)."""
    from edgeship.training.stage import TrainConfig, train

    runs = {}
    if "digits" in models:
        _say("suite: training the digits CNN")
        runs["digits"] = train(store, TrainConfig(epochs=epochs or 20, patience=5, seed=0)).run
    if "tabular" in models:
        _say("suite: training the wine MLP")
        runs["tabular"] = train(store, TrainConfig(dataset="wine", epochs=epochs or 40, patience=8,
                                                   seed=0)).run
    if "mobilenet" in models:
        _say("suite: building MobileNetV2 alpha 0.35, 96x96x3, random weights")
        runs["mobilenet"] = mobilenet_run(store)
    return runs


def mobilenet_run(store: Any, n_train: int = 64, n_test: int = 32, classes: int = 10) -> Any:
    """A run laid out as docs/architecture.md says, around a random-weight MobileNetV2."""
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
            run.stage("train", {"by": "benchmarks.suites.reference", "weights": "random"}) as st:
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
    from edgeship.export.stage import ExportConfig, export_run
    from edgeship.export.validate import ValidationConfig

    loose = ValidationConfig(max_accuracy_drop=1.0, warn_accuracy_drop=1.0, min_top1_agreement=0.0)
    validation = loose if name == "mobilenet" else ValidationConfig()
    _say(f"suite: {name}: exporting TFLite float32/int8 and ONNX float32")
    export_run(run, ExportConfig(formats="tflite", quantize="float32,int8", validation=validation))
    export_run(run, ExportConfig(formats="onnx", quantize="float32", validation=validation))
    base = run.path / "exports" / "base"
    out = {k: base / k for k in ("tflite-float32", "tflite-int8", "onnx-float32")}
    if tvm:
        _say(f"suite: {name}: TVM untuned build")
        export_run(run, ExportConfig(formats="tvm", quantize="float32", trials=0, validation=validation,
                                     cache_dir=cache))
        out["tvm-untuned"] = base / "tvm-host"
        if trials > 0:
            copy = RunDir(cache.parent / "tuned-runs" / run.path.name)
            if copy.path.exists():
                shutil.rmtree(copy.path)
            shutil.copytree(run.path, copy.path, ignore=shutil.ignore_patterns("bench", "report.*"))
            _say(f"suite: {name}: TVM tuned build ({trials} MetaSchedule trials; minutes on 2 cores)")
            export_run(copy, ExportConfig(formats="tvm", quantize="float32", trials=trials,
                                          validation=validation, cache_dir=cache),
                       log=lambda m: _say(f"  {m}") if "trials" in m else None)
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
    from edgeship.devices.host import bench_artifact

    results = {}
    for key, folder in arts.items():
        r = bench_artifact(folder, runs=runs, warmup=warmup, threads=1)
        r["artifact"] = str(folder)
        results[key] = r
    return results


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


SMOKE = {"models": "digits", "epochs": 5, "no_tvm": True, "runs": 20, "warmup": 2, "rounds": 1}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m edgeship.benchmarks.suites.reference",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="where to keep the runs (default: a temporary folder)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--trials", type=int, default=64,
                   help="TVM MetaSchedule trials per model (0: untuned only)")
    p.add_argument("--no-tvm", action="store_true", help="skip TVM")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds for overhead and cold start")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs of the digits CNN and the wine MLP (default 20 and 40)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parse_args(p, argv, SMOKE)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.models if m not in MODELS]
    if bad or args.runs < 1 or args.warmup < 0 or args.trials < 0 or args.rounds < 1 \
            or (args.epochs is not None and args.epochs < 1):
        p.error(f"unknown model {bad[0]}" if bad
                else "runs >= 1, warmup >= 0, trials >= 0, rounds >= 1, epochs >= 1")
    return args


def _tvm_available(wanted: bool) -> bool:
    if not wanted:
        return False
    try:
        import tvm  # noqa: F401
    except ImportError:
        _say("suite: TVM is not installed; TVM not measured")
        return False
    return True


def _tvm_note(tuned: Path | None) -> str | None:
    """What to say when the tuned export shipped the untuned build (tuning measured slower)."""
    if tuned is None:
        return None
    tuning = (json.loads((tuned / "artifact.json").read_text()).get("tuning") or {})
    if tuning.get("shipped") == "tuned":
        return None
    return (f"TVM tuning shipped the untuned build ({tuning.get('note')}); export's own timing tuned "
            f"{tuning.get('tuned_ms')} ms vs untuned {tuning.get('untuned_ms')} ms")


def measure(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Every figure the report prints, for the models and settings in ``args``."""
    tvm = _tvm_available(not args.no_tvm)
    t_start = time.perf_counter()
    runs = make_runs(RunStore(out / "runs"), args.models, args.epochs)
    timings, harness, cold, tvm_notes = {}, {}, {}, {}
    for name, run in runs.items():
        arts = export_all(name, run, tvm, args.trials, out / "tvm-cache")
        note = _tvm_note(arts.get("tvm-tuned"))
        if note:
            tvm_notes[name] = note
        _say(f"suite: {name}: timing {', '.join(arts)}")
        timings[name] = time_backends(arts, args.runs, args.warmup)
        stored = [r for k, r in timings[name].items() if k != "tvm-tuned"]
        for r in stored:
            r["artifact"] = str(Path(r["artifact"]).relative_to(run.path))
        save_results(run, stored, label="benchmarks.suites.reference")
        _say(f"suite: {name}: harness overhead and cold start")
        harness[name] = harness_overhead(arts["tflite-float32"], args.runs, args.warmup, args.rounds)
        cold[name] = cold_start(arts["tflite-float32"], out / "cold" / name, args.rounds)
    return {
        "device": device_facts(), "runs": args.runs, "warmup": args.warmup, "trials": args.trials,
        "tvm": tvm, "summary": summarize(timings), "harness": harness, "cold": cold,
        "tvm_notes": tvm_notes, "runs_dirs": [str(r.path) for r in runs.values()],
        "wall_s": round(time.perf_counter() - t_start, 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    info = measure(args, args.out or Path(tempfile.mkdtemp(prefix="edgeship-suite-")))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print_report(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
