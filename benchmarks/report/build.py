"""Gather a run into a ``Report``: its stored results by device, verdicts, recommendations, and
the compression table from the variants' metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeship.benchmarks.report.fleet import fleet_summary
from edgeship.benchmarks.report.model import Report, group_devices
from edgeship.benchmarks.report.recommend import DEFAULT_ACCURACY_BUDGET, check_budget, recommendations
from edgeship.benchmarks.report.verdicts import judge
from edgeship.benchmarks.store import load_results
from edgeship.core.errors import RunError
from edgeship.core.fsutil import read_json
from edgeship.core.runstore import RunDir


def build_report(run: RunDir, accuracy_budget: float = DEFAULT_ACCURACY_BUDGET) -> Report:
    """Read ``bench/*.json`` and the variants' metrics; a ``RunError`` if nothing was measured.

    ``accuracy_budget`` (percentage points, >= 0) is the recommendations' budget.
    """
    budget = check_budget(accuracy_budget)
    manifest = run.manifest
    results = load_results(run)
    if not results:
        raise RunError(f"run {run.id} has no benchmark results in {run.path / 'bench'}; "
                       f"measure first with `edgeship bench {run.id}`")
    parents = {name: (v or {}).get("parent") for name, v in (manifest.get("variants") or {}).items()}
    devices = group_devices(results)
    for dev in devices:
        judge(dev, parents)
    rep = Report(run_id=run.id, run_path=run.path, devices=devices,
                 compression=compression_table(run, manifest),
                 environment=manifest.get("environment") or {}, accuracy_budget=budget)
    rep.recommendations = recommendations(rep, budget)
    rep.fleet = fleet_summary(results)
    for dev, rec in zip(devices, rep.recommendations, strict=True):
        for r in dev.rows:
            if r.name == rec["name"] and r.threads == rec["threads"]:
                r.codes.insert(0, "R")
    return rep


def compression_table(run: RunDir, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The trained model and each variant: accuracy, change, sparsity, sizes (from metrics.json)."""
    rows: list[dict[str, Any]] = []
    base_metrics = _read_metrics(run.path / "model" / "metrics.json")
    base_acc = ((base_metrics.get("test") or {}).get("accuracy")
                if isinstance(base_metrics.get("test"), dict) else base_metrics.get("test_accuracy"))
    rows.append({"variant": "base", "parent": None, "passes": "trained",
                 "test_accuracy": base_acc, "accuracy_delta": 0.0 if base_acc is not None else None,
                 "sparsity": None, "params": (manifest.get("model") or {}).get("params"),
                 "nonzero_params": None, "tflite_bytes": None, "tflite_gzip_bytes": None,
                 "deploy_form": "float32"})
    for name, entry in (manifest.get("variants") or {}).items():
        entry = entry or {}
        m = _read_metrics(run.path / str(entry.get("dir") or f"variants/{name}") / "metrics.json")
        merged = {**entry, **m}
        rows.append({
            "variant": name, "parent": entry.get("parent"),
            "passes": ", ".join(merged.get("applied") or merged.get("passes") or []) or "-",
            "test_accuracy": merged.get("test_accuracy"), "accuracy_delta": merged.get("accuracy_delta"),
            "sparsity": merged.get("sparsity"), "params": merged.get("params"),
            "nonzero_params": merged.get("nonzero_params"), "tflite_bytes": merged.get("tflite_bytes"),
            "tflite_gzip_bytes": merged.get("tflite_gzip_bytes"), "deploy_form": merged.get("deploy_form"),
        })
    return rows


def _read_metrics(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
