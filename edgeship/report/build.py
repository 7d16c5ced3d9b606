"""Gather a run into a ``Report``: its stored results by device, verdicts, recommendations, and
the compression table from the variants' metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_runtime.result import result_name
from edgeship.benchmarks.store import load_results
from edgeship.core.console import warn
from edgeship.core.errors import RunError
from edgeship.core.fsutil import read_json
from edgeship.core.runstore import RunDir
from edgeship.report.fleet import fleet_summary
from edgeship.report.model import Device, Report, group_devices, result_device_id
from edgeship.report.monitoring import load_monitoring
from edgeship.report.recommend import DEFAULT_ACCURACY_BUDGET, check_budget, recommendations
from edgeship.report.serving import load_serving
from edgeship.report.verdicts import judge


def build_report(run: RunDir, accuracy_budget: float = DEFAULT_ACCURACY_BUDGET) -> Report:
    """Read ``bench/*.json`` and the variants' metrics; a ``RunError`` if nothing was measured.

    ``accuracy_budget`` (percentage points, >= 0) is the recommendations' budget.
    """
    budget = check_budget(accuracy_budget)
    manifest = run.manifest
    results = load_results(run)
    serving, monitoring = load_serving(run.path), load_monitoring(run.path)
    if not results and (serving or monitoring):  # a served or monitored run: those sections alone
        return Report(run_id=run.id, run_path=run.path, devices=[],
                      compression=compression_table(run, manifest),
                      environment=manifest.get("environment") or {}, accuracy_budget=budget,
                      zero_rule=zero_rule_accuracy(run), serving=serving, monitoring=monitoring)
    if not results:
        raise RunError(f"run {run.id} has no benchmark results in {run.path / 'bench'}; "
                       f"measure first with `edgeship bench {run.id}`")
    from edgeship.export.listing import list_artifacts

    exports = {m["dir"]: m for m in list_artifacts(run)}
    results, stale = split_stale(run, results, exports)
    if stale and not results:
        raise RunError(f"every benchmark result of run {run.id} is stale ({stale[0][1]}); re-export and "
                       f"measure again: `edgeship export {run.id} --variant all`, `edgeship bench {run.id}`")
    if stale:
        warn(f"left {len(stale)} stale benchmark results out of the report ({stale[0][1]}); "
             f"re-export and measure again to include them")
    parents = {name: (v or {}).get("parent") for name, v in (manifest.get("variants") or {}).items()}
    devices = group_devices(results)
    for dev in devices:
        judge(dev, parents)
        flag_mixed_int8(dev, exports)
        left_out = [reason for did, reason in stale if did == dev.device_id]
        if left_out:
            note = f"{len(left_out)} stale results left out: {left_out[0]}"
            dev.note = f"{dev.note}; {note}" if dev.note else note
    rep = Report(run_id=run.id, run_path=run.path, devices=devices,
                 compression=compression_table(run, manifest),
                 environment=manifest.get("environment") or {}, accuracy_budget=budget,
                 zero_rule=zero_rule_accuracy(run))
    rep.recommendations = recommendations(rep, budget)
    rep.fleet = fleet_summary(results)
    rep.serving, rep.monitoring = serving, monitoring
    for dev, rec in zip(devices, rep.recommendations, strict=True):
        for r in dev.rows:
            if r.name == rec["name"] and r.threads == rec["threads"]:
                r.codes.insert(0, "R")
    return rep


def zero_rule_accuracy(run: RunDir) -> float | None:
    """The run's zero-rule baseline (always the most frequent class) on the test split: from
    ``model/metrics.json`` ``baselines``, else the train (or import) stage's metrics in the
    manifest; None when the run recorded none."""
    baselines = _read_metrics(run.path / "model" / "metrics.json").get("baselines")
    if isinstance(baselines, dict):
        zr = baselines.get("zero_rule")
        value = zr.get("accuracy") if isinstance(zr, dict) else zr
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    for stage in run.manifest.get("stages") or []:
        value = (((stage or {}).get("metrics") or {}).get("baselines") or {}).get("zero_rule")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def split_stale(run: RunDir, results: list[dict[str, Any]], exports: dict[str, dict[str, Any]] | None = None,
                ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The results made from each variant's current model, and (device id, reason) for the others.

    A result is stale when its ``source_sha256`` (the model its artifact came from) is not the
    variant's model now, or its export is stale (``export.listing``): ``compress --force``
    replaced the model after it was measured. The report leaves those out (never recommends
    them) and says so. ``exports``: ``list_artifacts`` by folder, when the caller has read it.
    """
    from edgeship.export.listing import ModelHashes, list_artifacts

    models = ModelHashes(run)
    if exports is None:
        exports = {m["dir"]: m for m in list_artifacts(run)}
    fresh: list[dict[str, Any]] = []
    stale: list[tuple[str, str]] = []
    for r in results:
        where = f"bench/{result_name(r)}.json"
        reason = models.check(str(r.get("variant") or ""), r.get("source_sha256"), where)
        export = exports.get(str(r.get("bundle") or r.get("artifact") or "").rstrip("/"))
        if reason is None and export is not None and export.get("stale"):
            reason = f"{where} measured {export['stale']}"
        if reason is None:
            fresh.append(r)
        else:
            stale.append((result_device_id(r), reason))
    return fresh, stale


def flag_mixed_int8(dev: Device, exports: dict[str, dict[str, Any]]) -> None:
    """Mark the rows whose int8 artifact keeps some layers in float (export's selective int8,
    made when full int8 failed validation): its speed and size are not full int8's."""
    for r in dev.rows:
        layers = (exports.get(f"exports/{r.variant}/{r.artifact}") or {}).get("int8_float_layers")
        if layers:
            r.flags.append(f"int8 with {len(layers)} layer{'s' if len(layers) != 1 else ''} kept in "
                           "float (full int8 failed validation)")
            r.codes.append("F")


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
