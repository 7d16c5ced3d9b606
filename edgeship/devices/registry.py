"""Where ``edgeship bench --on X`` measures: the one registry of device drivers, and storing.

Every device's driver keeps one contract (``Driver``): ``(run, settings, options, *, progress,
log) -> list[dict]``, where ``settings`` (``BenchSettings``: what to measure, how often) is the
same for every device and ``options`` is the device's own typed value
(``edgeship.devices.options``); results are in the schema of ``edge_runtime.result``.
``bench_run`` calls one and stores what it returns; ``plan_size`` says how many measurements it
will make, for a progress bar. Drivers are imported when asked for, so a checkout without one
says so in one line. It sits above every driver: the host's and the browser's, the Pi's, the
fleet's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

from edge_runtime.result import result_name
from edgeship.benchmarks.harness import BenchSettings
from edgeship.benchmarks.store import save_results
from edgeship.core.console import Progress
from edgeship.core.errors import EdgeshipError, InputError
from edgeship.core.fsutil import read_json
from edgeship.core.runstore import RunDir
from edgeship.devices.options import OPTIONS, DeviceOptions

# device -> ("module:function" of a ``Driver``, what to do when it is missing)
DRIVERS: dict[str, tuple[str, str]] = {
    "host": ("edgeship.devices.host:bench_host", "reinstall edgeship"),
    "browser": ("edgeship.devices.browser.session:bench_browser",
                "the browser driver is not installed in this checkout"),
    "pi": ("edgeship.devices.pi_driver:bench_pi",
           "the Raspberry Pi driver is not installed in this checkout"),
    "fleet": ("edgeship.devices.fleet.session:bench_fleet",
              "the fleet driver (TVM's RPC tracker) is not installed in this checkout"),
}


# device -> "module:function" of (run, settings, options) -> int: the measurements its driver makes;
# a device without one shows a bar without a total
PLANS: dict[str, str] = {
    "host": "edgeship.devices.host:plan_size",
    "browser": "edgeship.devices.browser.session:plan_size",
}

# device -> "module:function" of (results) -> {run-relative path: JSON}: files a driver's results
# imply beside them, stored with them in one stage (the browser's bundles learn their measured runtime)
BESIDE: dict[str, str] = {"browser": "edgeship.devices.browser.session:measurements_files"}


class Driver(Protocol):
    """What every ``--on`` target implements."""

    def __call__(self, run: RunDir, settings: BenchSettings, options: Any, *,
                 progress: Progress | None = None,
                 log: Callable[[str], None] | None = None) -> list[dict[str, Any]]: ...


class DriverUnavailableError(EdgeshipError):
    """``--on X`` names a device whose driver is missing or cannot be imported."""


def get_driver(on: str) -> Driver:
    """The driver function for a device name, imported now; a one-line error if it is missing."""
    if on not in DRIVERS:
        raise InputError(f"unknown device '{on}'; choose from {', '.join(DRIVERS)}")
    entry, hint = DRIVERS[on]
    module_name, attr = entry.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise DriverUnavailableError(f"benchmarking --on {on} needs {entry}, which is missing: {hint}") \
                from e
        raise DriverUnavailableError(
            f"benchmarking --on {on}: {module_name} cannot be imported (no module {e.name!r}); "
            f"pip install {e.name}") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise DriverUnavailableError(
            f"benchmarking --on {on} needs {entry}, which {module_name} does not define yet: {hint}")
    return fn


def bench_run(
    run: RunDir,
    on: str = "host",
    settings: BenchSettings | None = None,
    options: DeviceOptions | None = None,
    *,
    label: str | None = None,
    save: bool = True,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run ``on``'s driver (default settings and options when not given), store its results,
    return them.

    Results a driver already stored itself (same file, same content) are not stored twice.
    An export made from a model its variant no longer has (``compress --force`` replaced it) is
    refused before anything is measured; each result records its source model's sha256, so the
    report can tell a measurement of an older model.
    """
    driver = get_driver(on)
    settings = settings or BenchSettings()
    if options is None and on in OPTIONS:
        options = OPTIONS[on]()
    refuse_stale(run, settings.variants)
    start = run.begin() if save else None  # --no-wait fails before measuring; wall time covers it
    results = driver(run, settings, options, progress=progress, log=log)
    if not isinstance(results, list) or not results:
        raise EdgeshipError(f"the {on} driver returned no results; nothing was measured")
    note_sources(run, results)
    if save and not already_saved(run, results):
        default = options.label() if options is not None else on
        save_results(run, results, label=label or default, start=start, beside=beside_files(on, results))
    return results


def plan_size(run: RunDir, on: str, settings: BenchSettings,
              options: DeviceOptions | None = None) -> int | None:
    """How many measurements ``on``'s driver will make, if it can say before it starts."""
    if on not in PLANS:
        return None
    module_name, attr = PLANS[on].split(":")
    return getattr(importlib.import_module(module_name), attr)(run, settings, options)


def beside_files(on: str, results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The files ``on``'s results imply beside them (``BESIDE``); none for most devices."""
    if on not in BESIDE:
        return {}
    module_name, attr = BESIDE[on].split(":")
    return getattr(importlib.import_module(module_name), attr)(results)


class StaleArtifactError(EdgeshipError):
    """An export was made from a model its variant no longer has."""


def refuse_stale(run: RunDir, variants: Any = "all") -> None:
    """A one-line error if an export of ``variants`` no longer matches its variant's model."""
    from edgeship.export.listing import stale_exports

    stale = stale_exports(run, variants)
    if stale:
        more = f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""
        raise StaleArtifactError(f"not measuring stale exports: {stale[0]}{more}")


def note_sources(run: RunDir, results: list[dict[str, Any]]) -> None:
    """Add each result's ``source_sha256``: the Keras model its artifact was made from."""
    from edgeship.export.listing import list_artifacts

    metas = {m["dir"]: m for m in list_artifacts(run, include_failed=False)}
    for r in results:
        meta = metas.get(str(r.get("bundle") or r.get("artifact") or "").rstrip("/"))
        sha = ((meta or {}).get("source") or {}).get("sha256")
        if sha and "source_sha256" not in r:
            r["source_sha256"] = sha


def already_saved(run: RunDir, results: list[dict[str, Any]]) -> bool:
    """True when every result is in ``bench/`` already with the same measurements."""
    for r in results:
        path = run.path / "bench" / (result_name(r) + ".json")
        try:
            stored = read_json(path)
        except (OSError, ValueError):
            return False
        keys = ("latency_ms", "measured_at", "init_ms", "first_ms")
        if any(stored.get(k) != r.get(k) for k in keys):
            return False
    return True
