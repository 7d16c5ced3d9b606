"""Compression benchmark: every pass on the digits CNN and a tabular MLP, sizes as ratios.

    python -m edgeship.benchmarks.compression_bench [--runs-dir DIR] [--seed 0]

Trains both reference models, makes one variant per pass, and prints: variant, test accuracy,
change, TFLite bytes, gzip bytes and their ratios to the float32 model, measured side by side
in one process. Then checks the targets from the compression issue and says which are met.
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

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


def bench_dataset(store: Any, dataset: str, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from edgeship.compression.measure import tflite_bytes
    from edgeship.compression.stage import CompressConfig, compress_run
    from edgeship.training.keras_env import load_model
    from edgeship.training.stage import TrainConfig, train

    console.print(f"[bold]{dataset}[/]: training the reference model")
    trained = train(store, TrainConfig(dataset=dataset, seed=seed))
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
    for name, kwargs in PASSES:
        t0 = time.perf_counter()
        result = compress_run(run, CompressConfig(name=name, seed=seed, **kwargs))
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
    by = {r["variant"]: r for r in rows}
    int8, pqat, student = by["int8"], by["prune75-pqat"], by["distill25-int8"]
    d = student["notes"]["distillation"]
    worst_drop = max(-by[v]["change_pt"] for v in ("int8", "qat", "prune75-pqat", "cluster16-cqat"))
    return [
        ("int8 <= 0.30x float32 size", int8["size_ratio"] <= 0.30, f"{int8['size_ratio']:.3f}x"),
        ("pruned 75% + int8, gzip <= 0.12x float32 gzip", pqat["gzip_ratio"] <= 0.12,
         f"{pqat['gzip_ratio']:.3f}x"),
        ("accuracy drop <= 1.0 pt (int8, QAT, PQAT, CQAT)", worst_drop <= 1.0, f"worst {worst_drop:.2f} pt"),
        ("student >= 4x fewer params", d["teacher_params"] >= 4 * d["student_params"],
         f"{d['teacher_params'] / d['student_params']:.1f}x"),
        ("student keeps >= 97% of teacher accuracy", student["accuracy"] >= 0.97 * base["accuracy"],
         f"{student['accuracy'] / base['accuracy']:.1%}"),
        ("student beats its scratch twin", d["gain_over_scratch"] > 0,
         f"{d['gain_over_scratch'] * 100:+.2f} pt"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tabular", default="breast_cancer")
    args = parser.parse_args()
    from edgeship.core.runstore import RunStore

    root = args.runs_dir or Path(tempfile.mkdtemp(prefix="edgeship-bench-"))
    store = RunStore(root)
    results = {}
    for dataset in ("digits", args.tabular):
        results[dataset] = bench_dataset(store, dataset, args.seed)
    for dataset, (rows, base) in results.items():
        print_table(dataset, rows, base)
    t = Table(title="targets (digits CNN)")
    for col in ("target", "met", "measured"):
        t.add_column(col)
    for label, ok, measured in check_targets(*results["digits"]):
        t.add_row(label, "[green]yes[/]" if ok else "[red]no[/]", measured)
    console.print(t)
    console.print(f"runs kept in {root}")


if __name__ == "__main__":
    main()
