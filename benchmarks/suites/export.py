"""Export benchmark: the reference models in every format, sizes, export times and TVM's gain.

    python -m edgeship.benchmarks.suites.export [--models digits,mobilenet] [--trials-digits 200]
        [--minutes-digits 4] [--trials-mobilenet 600] [--minutes-mobilenet 9] [--threads 1]
        [--epochs 5] [--runs 200] [--rounds 5] [--cache-dir DIR] [--json FILE]
    python -m edgeship.benchmarks.suites.export --smoke   # digits only, a few trials and calls

Builds the digits CNN (trained a few epochs on scikit-learn's digits) and MobileNetV2
(alpha 0.35, 96x96x3, random weights), exports each to TFLite float32 and int8
(TFLiteConverter), ONNX (tf2onnx, opset 17) and TVM for the host, untuned and tuned
(MetaSchedule, the trial budget given), and prints per model: file sizes, export wall times,
and the latencies of TFLite float32 (ai_edge_litert), TVM untuned and TVM tuned, timed side
by side in this one process with the same thread count and the same loop
(``edge_runtime.timing.time_calls``, median), in interleaved rounds so load on a shared
machine hits all three alike. Then it checks the targets of the export issue:
tuned TVM <= 0.3x untuned and <= 1.0x TFLite float32, within the stated budget.

The tuning cache defaults to a fresh temporary folder so the tuning is measured, not reused;
pass ``--cache-dir`` to keep it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from edgeship.benchmarks.suites.smoke import parse_args
from edgeship.export import captured_stderr
from edgeship.training.keras_env import seed_everything, tf

console = Console(width=120)
err = Console(stderr=True)

UNTUNED_TARGET = 0.3  # tuned TVM latency / untuned TVM latency
TFLITE_TARGET = 1.0  # tuned TVM latency / TFLite float32 latency
SMOKE = {"models": "digits", "epochs": 1, "trials_digits": 4, "minutes_digits": 1, "runs": 20, "rounds": 1}


@dataclass
class ModelReport:
    name: str
    shape: tuple[int, ...]
    params: int
    sizes: dict[str, int] = field(default_factory=dict)
    export_s: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- models


def digits_cnn(epochs: int, seed: int) -> tuple[Any, np.ndarray]:
    """The project's CNN on 8x8 digits, trained briefly; returns it and calibration samples."""
    from sklearn.datasets import load_digits

    from edgeship.training.models import build_model

    seed_everything(seed)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    model = build_model("cnn", (8, 8, 1), 10)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model, x[:200]


def mobilenet(seed: int) -> tuple[Any, np.ndarray]:
    """MobileNetV2 alpha 0.35 at 96x96x3 (keras.applications, random weights)."""
    from edgeship.training.models import build_model

    seed_everything(seed)
    model = build_model("mobilenetv2", (96, 96, 3), 10)
    rng = np.random.default_rng(seed)
    return model, rng.uniform(-1, 1, (32, 96, 96, 3)).astype(np.float32)


# ---------------------------------------------------------------- exports


def to_tflite(model: Any, path: Path, representative: np.ndarray | None) -> float:
    t = tf()
    t0 = time.perf_counter()
    conv = t.lite.TFLiteConverter.from_keras_model(model)
    if representative is not None:
        conv.optimizations = [t.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([representative[i:i + 1]] for i in range(len(representative)))
        conv.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = t.int8
        conv.inference_output_type = t.int8
    path.write_bytes(conv.convert())
    return time.perf_counter() - t0


def to_onnx(model: Any, path: Path) -> float:
    import tf2onnx

    t = tf()
    t0 = time.perf_counter()
    spec = (t.TensorSpec((None, *model.inputs[0].shape[1:]), t.float32, name="input"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(path))
    return time.perf_counter() - t0


# ---------------------------------------------------------------- timing


def tflite_call(path: Path, x: np.ndarray, threads: int) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    return it.invoke


def tvm_call(path: Path, x: np.ndarray) -> Any:
    import tvm
    from tvm import relax

    with captured_stderr():  # "Scope Loaded:" per library
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
    main, arg = vm["main"], tvm.runtime.tensor(x)
    return lambda: main(arg)


def side_by_side(calls: dict[str, Any], runs: int, rounds: int) -> dict[str, float]:
    """Median ms per call of each, over ``rounds`` interleaved rounds of ``runs`` calls."""
    from edgeship.export.tvm import median_call_ms

    per: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            per[name].append(median_call_ms(fn, runs=runs, warmup=5))
    return {k: statistics.median(v) for k, v in per.items()}


# ---------------------------------------------------------------- one model


def bench_model(name: str, model: Any, rep: np.ndarray, work: Path, trials: int,
                budget_s: float | None, threads: int, cache_dir: Path, runs: int,
                rounds: int) -> ModelReport:
    from edgeship.export.tvm import build_tvm

    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    report = ModelReport(name, shape, int(model.count_params()))
    work.mkdir(parents=True, exist_ok=True)
    f32, i8, onnx_path = work / "model.tflite", work / "model-int8.tflite", work / "model.onnx"
    err.print(f"[bold]{name}[/]: TFLite float32, int8, ONNX")
    report.export_s["tflite-float32"] = to_tflite(model, f32, None)
    report.export_s["tflite-int8"] = to_tflite(model, i8, rep)
    report.export_s["onnx"] = to_onnx(model, onnx_path)
    err.print(f"[bold]{name}[/]: TVM untuned")
    untuned = build_tvm(onnx_path, work / "tvm-untuned", "host", num_threads=threads)
    report.export_s["tvm-untuned"] = untuned.wall_s["total_s"]
    err.print(f"[bold]{name}[/]: TVM tuned, {trials} trials"
              + (f", budget {budget_s / 60:g} min" if budget_s else ""))
    tuned = build_tvm(onnx_path, work / "tvm-tuned", "host", trials=trials, time_budget_s=budget_s,
                      cache_dir=cache_dir, num_threads=threads, ship="tuned")
    report.export_s["tvm-tuned"] = tuned.wall_s["total_s"]
    report.tuning = dict(tuned.tuning or {})
    for key, path in (("tflite-float32", f32), ("tflite-int8", i8), ("onnx", onnx_path),
                      ("tvm-untuned", untuned.file), ("tvm-tuned", tuned.file)):
        report.sizes[key] = path.stat().st_size
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    err.print(f"[bold]{name}[/]: timing side by side ({rounds} rounds x {runs} calls)")
    report.latency_ms = side_by_side(
        {"tflite-float32": tflite_call(f32, x, threads), "tvm-untuned": tvm_call(untuned.file, x),
         "tvm-tuned": tvm_call(tuned.file, x)}, runs, rounds)
    return report


# ---------------------------------------------------------------- report


def _kb(n: int) -> str:
    return f"{n / 1024:,.1f} KB"


def print_report(r: ModelReport, threads: int, runs: int, rounds: int) -> dict[str, Any]:
    t = r.tuning
    title = f"{r.name}  input {'x'.join(map(str, r.shape))}  params {r.params:,}"
    table = Table(title=title, title_justify="left")
    table.add_column("format")
    table.add_column("file size", justify="right")
    table.add_column("export wall", justify="right")
    table.add_column("latency (median)", justify="right")
    for key in ("tflite-float32", "tflite-int8", "onnx", "tvm-untuned", "tvm-tuned"):
        lat = r.latency_ms.get(key)
        table.add_row(key, _kb(r.sizes[key]), f"{r.export_s[key]:.1f} s",
                      f"{lat:.4f} ms" if lat is not None else "-")
    console.print(table)
    ratio_u = r.latency_ms["tvm-tuned"] / r.latency_ms["tvm-untuned"]
    ratio_t = r.latency_ms["tvm-tuned"] / r.latency_ms["tflite-float32"]
    minutes = (t.get("tune_s") or 0) / 60
    limit = f"{t['time_budget_s'] / 60:g} min" if t.get("time_budget_s") else "no time limit"
    budget = (f"{t.get('trials_requested')} trials, {limit}; used {t.get('trials_run')} trials over "
              f"{t.get('tasks')} tasks (<= {t.get('max_trials_per_task')} each) in {minutes:.1f} min "
              f"(of which {t.get('setup_s') or 0:.0f} s start-up)"
              + (", stopped by the time budget" if t.get("stopped_early") else "")
              + (", reused from cache" if t.get("cache_hit") else ""))
    console.print(f"  tuning budget: {budget}")
    console.print(f"  {threads} thread(s) for both runtimes; latency = median of {rounds} interleaved "
                  f"rounds of {runs} calls")
    console.print(f"  TVM tuned / untuned      = {ratio_u:.3f}  (target <= {UNTUNED_TARGET}: "
                  f"{'met' if ratio_u <= UNTUNED_TARGET else 'NOT met'})")
    console.print(f"  TVM tuned / TFLite f32   = {ratio_t:.3f}  (target <= {TFLITE_TARGET}: "
                  f"{'met' if ratio_t <= TFLITE_TARGET else 'NOT met'})")
    console.print()
    return {"model": r.name, "input": list(r.shape), "params": r.params, "bytes": r.sizes,
            "export_s": {k: round(v, 2) for k, v in r.export_s.items()},
            "latency_ms": r.latency_ms, "tuned_over_untuned": ratio_u,
            "tuned_over_tflite_float32": ratio_t, "threads": threads, "tuning": t}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgeship.benchmarks.suites.export",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="digits,mobilenet", help="comma list: digits, mobilenet")
    p.add_argument("--trials-digits", type=int, default=200, help="MetaSchedule trials, digits CNN")
    p.add_argument("--minutes-digits", type=float, default=4, help="tuning time budget, digits CNN")
    p.add_argument("--trials-mobilenet", type=int, default=600, help="MetaSchedule trials, MobileNetV2")
    p.add_argument("--minutes-mobilenet", type=float, default=9, help="tuning time budget, MobileNetV2")
    p.add_argument("--threads", type=int, default=1, help="threads for TFLite and TVM (both)")
    p.add_argument("--epochs", type=int, default=5, help="digits CNN training epochs")
    p.add_argument("--runs", type=int, default=200, help="timed calls per round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--cache-dir", type=Path, default=None, help="TVM tuning cache (default: fresh)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--seed", type=int, default=0)
    args = parse_args(p, argv, SMOKE)
    # Before TVM starts its thread pool (every heavy import here is lazy): the same thread
    # count as TFLite, and no pinning, so both run under the same conditions.
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    os.environ["TVM_BIND_THREADS"] = "0"
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(models) - {"digits", "mobilenet"}
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(sorted(unknown))}; choose digits, mobilenet")
    results = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        cache = args.cache_dir or Path(tmp) / "tvm-cache"
        for name in models:
            if name == "digits":
                model, rep = digits_cnn(args.epochs, args.seed)
                trials, minutes = args.trials_digits, args.minutes_digits
                label = f"digits CNN (sklearn digits, {args.epochs} epochs)"
            else:
                model, rep = mobilenet(args.seed)
                trials, minutes = args.trials_mobilenet, args.minutes_mobilenet
                label = "MobileNetV2 alpha 0.35 (keras.applications, random weights)"
            budget_s = minutes * 60 if minutes and minutes > 0 else None
            r = bench_model(label, model, rep, Path(tmp) / name, trials, budget_s, args.threads,
                            cache, args.runs, args.rounds)
            results.append(print_report(r, args.threads, args.runs, args.rounds))
    console.print(f"total wall time {(time.perf_counter() - t_all) / 60:.1f} min")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
