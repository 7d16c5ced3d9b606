"""Benchmark results on disk: ``runs/<id>/bench/<name>.json``, one file per result.

Every driver (host, browser, Pi) stores through ``save_results`` so the files all follow the
schema in ``edge_runtime.result`` and the manifest records each measuring session as a
``bench`` stage. A result's file name is derived from what was measured (where, variant,
artifact folder, threads), so measuring the same thing again replaces its file and leaves the
others in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_runtime.result import (
    ResultSchemaError,
    is_emulated,
    require_valid,
    result_name,
    upgrade_result,
    validate_result,
)
from edgeship.core.errors import InputError, RunError
from edgeship.core.fsutil import read_json, write_json_atomic
from edgeship.core.runstore import RunDir, StageStart

BENCH_DIR = "bench"


def save_results(run: RunDir, results: list[dict[str, Any]], *, label: str,
                 start: StageStart | None = None,
                 beside: Mapping[str, dict[str, Any]] | None = None) -> list[Path]:
    """Validate every result, then write them in one ``bench`` stage; returns the final paths.

    ``label`` names the measuring session in the manifest (e.g. "host", "browser",
    "pi user@host"). Nothing is written if any result is invalid. Files already in ``bench/``
    with other names are kept: the stage copies them forward, then replaces the folder whole.
    The copy is read inside the stage, under the run's lock, so a concurrent ``bench`` on the
    same run cannot commit in between and lose its results. ``start`` (``run.begin()``, taken
    before measuring) makes the stage's wall time cover the measuring, not only this commit.
    ``beside`` are JSON files the results imply elsewhere in the run (run-relative path -> content,
    e.g. a browser bundle's ``measurements.json``, which its page opens with), committed in the same
    stage; one whose folder is gone is left out. The driver says what they are
    (``edgeship.devices.registry.BESIDE``): the store knows no device.
    """
    if not results:
        raise InputError("no benchmark results to save")
    names: dict[str, dict[str, Any]] = {}
    for r in results:
        try:
            require_valid(r)
        except ResultSchemaError as e:
            raise InputError(f"{e}; fix the driver that produced it") from e
        name = result_name(r) + ".json"
        if name in names:
            raise InputError(f"two results would share bench/{name}; measure each configuration once")
        names[name] = r
    params = {"label": label, "results": sorted(names),
              "on": sorted({r["on"] for r in results}),
              "devices": sorted({str(r.get("device_id")) for r in results}),
              "emulated": any(is_emulated(r) for r in results)}
    with run.stage("bench", params, start=start) as st:
        out = st.output_dir(BENCH_DIR)
        existing = run.path / BENCH_DIR  # read under the lock the stage holds
        if existing.is_dir():
            for old in sorted(existing.glob("*.json")):
                if old.name not in names:
                    (out / old.name).write_bytes(old.read_bytes())
        for name, r in names.items():
            write_json_atomic(out / name, {**r, "label": r.get("label") or label})
        for rel, content in (beside or {}).items():
            if (run.path / rel).parent.is_dir():
                write_json_atomic(st.output(rel), content)
        st.metrics = {
            "results": len(names),
            "p50_ms": {name.removesuffix(".json"): r["latency_ms"]["p50"] for name, r in names.items()},
        }
    return [run.path / BENCH_DIR / name for name in names]


def load_results(run: RunDir, *, strict: bool = False) -> list[dict[str, Any]]:
    """Every stored result in ``bench/`` (file name order), each with ``file`` added.

    Results of an older schema are upgraded (``edge_runtime.result.upgrade_result``). An
    unreadable or invalid file is skipped (``strict=False``), since a report should still show
    the rest, or raises ``RunError`` naming it (``strict=True``).
    """
    folder = run.path / BENCH_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = read_json(path)
        except (OSError, ValueError) as e:
            if strict:
                raise RunError(f"{path} is not readable JSON ({e}); re-run `edgeship bench`") from e
            continue
        if isinstance(data, dict):
            data = upgrade_result(data)
        problems = validate_result(data)
        if problems:
            if strict:
                raise RunError(f"{path} does not follow the result schema ({'; '.join(problems)}); "
                               "re-run `edgeship bench`")
            continue
        data["file"] = f"{BENCH_DIR}/{path.name}"
        found.append(data)
    return found

