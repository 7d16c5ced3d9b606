"""Compression benchmark: every pass on the digits CNN and a tabular MLP, sizes as ratios.

    python -m edgeship.benchmarks.suites.compression [--runs-dir DIR] [--seed 0] [--tabular breast_cancer]
        [--datasets digits,breast_cancer] [--passes int8,prune75,...] [--train-epochs N] [--tune-epochs N]
    python -m edgeship.benchmarks.suites.compression --smoke   # digits, two passes, a few epochs

Trains both reference models, makes one variant per pass, and prints: variant, test accuracy,
change, TFLite bytes, gzip bytes and their ratios to the float32 model, measured side by side
in one process. Then checks the targets from the compression issue and says which are met
(those whose variants were made).
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgeship.benchmarks.suites.smoke import parse_args
from edgeship.core.runstore import RunStore
from edgeship.training.keras_env import load_model

console = Console(width=140)

PASSES: list[tuple[str, dict[str, Any]]] = [
    ("float16", {"quantize": "float16"}),
    ("dynamic", {"quantize": "dynamic"}),
    ("int8", {"quantize": "int8"}),
    ("qat", {"quantize": "qat"}),
    ("prune75", {"prune": 0.75}),
    ("prune75-pqat", {"prune": 0.75, "quantize": "qat"}),
    ("prune2of4", {"prune_structure": "2:4"}),
    ("cluster16", {"cluster": 16}),
    ("cluster16-cqat", {"cluster": 16, "quantize": "qat"}),
    ("distill25", {"distill": True, "student_width": 0.25}),
    ("distill25-int8", {"distill": True, "student_width": 0.25, "quantize": "int8"}),
    ("lowrank-auto", {"low_rank": "auto"}),
]
SMOKE = {"datasets": "digits", "passes": "int8,prune75", "train_epochs": 3, "tune_epochs": 1}


def bench_dataset(store: Any, dataset: str, seed: int, passes: Sequence[str] | None = None,
                  train_epochs: int | None = None,
                  tune_epochs: int | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train ``dataset``'s reference model, then one variant per pass (``passes``: names, default all).

    ``train_epochs`` and ``tune_epochs`` override the training's and the passes' fine-tuning epochs.
    """
    from edgeship.compression.measure import tflite_bytes
    from edgeship.compression.stage import CompressConfig, compress_run
    from edgeship.training.stage import TrainConfig, train

    console.print(f"[bold]{dataset}[/]: training the reference model")
    trained = train(store, TrainConfig(dataset=dataset, seed=seed,
                                       **({"epochs": train_epochs} if train_epochs else {})))
    run = trained.run
    base_model = load_model(run.model_path("base"))
    f32 = tflite_bytes(base_model, "float32")
    base = {
        "accuracy": trained.metrics["test"]["accuracy"],
        "params": trained.metrics["params"],
        "bytes": len(f32),
        "gzip": len(gzip.compress(f32, 9, mtime=0)),
    }
    rows = []
    tune = {"epochs": tune_epochs, "distill_epochs": tune_epochs} if tune_epochs else {}
    for name, kwargs in PASSES:
        if passes is not None and name not in passes:
            continue
        t0 = time.perf_counter()
        result = compress_run(run, CompressConfig(name=name, seed=seed, **kwargs, **tune))
        m = result.metrics
        rows.append({
            "variant": name, "accuracy": m["test_accuracy"], "change_pt": m["accuracy_delta"] * 100,
            "params": m["params"], "bytes": m["tflite_bytes"], "gzip": m["tflite_gzip_bytes"],
            "size_ratio": m["tflite_bytes"] / base["bytes"],
            "gzip_ratio": m["tflite_gzip_bytes"] / base["gzip"],
            "seconds": time.perf_counter() - t0, "notes": m["notes"],
        })
        console.print(f"  {name}: {m['test_accuracy']:.4f} ({m['accuracy_delta'] * 100:+.2f} pt), "
                      f"{m['tflite_bytes']:,} B, {m['tflite_gzip_bytes']:,} B gzip")
    return rows, base


def print_table(dataset: str, rows: list[dict[str, Any]], base: dict[str, Any]) -> None:
    t = Table(title=f"{dataset}: float32 reference {base['accuracy']:.4f}, {base['params']:,} params, "
                    f"{base['bytes']:,} B ({base['gzip']:,} B gzip)")
    for col in ("variant", "accuracy", "change", "params", "TFLite B", "gzip B", "x float32",
                "gzip x f32 gzip", "wall s"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        t.add_row(r["variant"], f"{r['accuracy']:.4f}", f"{r['change_pt']:+.2f} pt", f"{r['params']:,}",
                  f"{r['bytes']:,}", f"{r['gzip']:,}", f"{r['size_ratio']:.3f}", f"{r['gzip_ratio']:.3f}",
                  f"{r['seconds']:.0f}")
    console.print(t)


def check_targets(rows: list[dict[str, Any]], base: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The compression issue's targets, each as (target, met, measured); those whose variants are
    missing are left out."""
    by = {r["variant"]: r for r in rows}
    out = []
    if "int8" in by:
        out.append(("int8 <= 0.30x float32 size", by["int8"]["size_ratio"] <= 0.30,
                    f"{by['int8']['size_ratio']:.3f}x"))
    if "prune75-pqat" in by:
        pqat = by["prune75-pqat"]
        out.append(("pruned 75% + int8, gzip <= 0.12x float32 gzip", pqat["gzip_ratio"] <= 0.12,
                    f"{pqat['gzip_ratio']:.3f}x"))
    quantized = [v for v in ("int8", "qat", "prune75-pqat", "cluster16-cqat") if v in by]
    if quantized:
        worst_drop = max(-by[v]["change_pt"] for v in quantized)
        out.append((f"accuracy drop <= 1.0 pt ({', '.join(quantized)})", worst_drop <= 1.0,
                    f"worst {worst_drop:.2f} pt"))
    if "distill25-int8" in by:
        student = by["distill25-int8"]
        d = student["notes"]["distillation"]
        out += [
            ("student >= 4x fewer params", d["teacher_params"] >= 4 * d["student_params"],
             f"{d['teacher_params'] / d['student_params']:.1f}x"),
            ("student keeps >= 97% of teacher accuracy", student["accuracy"] >= 0.97 * base["accuracy"],
             f"{student['accuracy'] / base['accuracy']:.1%}"),
            ("student beats its scratch twin", d["gain_over_scratch"] > 0,
             f"{d['gain_over_scratch'] * 100:+.2f} pt"),
        ]
    return out


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    names = [n for n, _ in PASSES]
    parser = argparse.ArgumentParser(prog="python -m edgeship.benchmarks.suites.compression",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tabular", default="breast_cancer", help="the tabular dataset")
    parser.add_argument("--datasets", default=None, help="comma list (default: digits and --tabular)")
    parser.add_argument("--passes", default=",".join(names), help="comma list of variants (default: all)")
    parser.add_argument("--train-epochs", type=int, default=None,
                        help="reference models' training epochs (default: edgeship train's)")
    parser.add_argument("--tune-epochs", type=int, default=None,
                        help="the passes' fine-tuning and distillation epochs (default: edgeship compress's)")
    args = parse_args(parser, argv, SMOKE)
    args.datasets = ([d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets
                     else ["digits", args.tabular])
    args.passes = [n.strip() for n in args.passes.split(",") if n.strip()]
    unknown = [n for n in args.passes if n not in names]
    if unknown:
        parser.error(f"unknown pass {unknown[0]}; choose from {', '.join(names)}")
    for flag in ("train_epochs", "tune_epochs"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)

    root = args.runs_dir or Path(tempfile.mkdtemp(prefix="edgeship-bench-"))
    store = RunStore(root)
    results = {}
    for dataset in args.datasets:
        results[dataset] = bench_dataset(store, dataset, args.seed, args.passes, args.train_epochs,
                                         args.tune_epochs)
    for dataset, (rows, base) in results.items():
        print_table(dataset, rows, base)
    first = args.datasets[0]
    t = Table(title=f"targets ({first})")
    for col in ("target", "met", "measured"):
        t.add_column(col)
    for label, ok, measured in check_targets(*results[first]):
        t.add_row(label, "[green]yes[/]" if ok else "[red]no[/]", measured)
    console.print(t)
    console.print(f"runs kept in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
