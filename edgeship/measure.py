"""Where ``edgeship bench --on X`` measures: the one registry of device drivers, and storing.

It sits on the top floor because its drivers live on every floor below: the host and browser
drivers in ``edgeship.benchmarks``, the Raspberry Pi's in ``edgeship.devices``. Drivers are
imported only when asked for (the browser driver pulls in Playwright, the Pi driver SSH); each is
a function ``(run, **options) -> list[dict]`` returning results in the schema of
``edge_runtime.result``. ``bench_run`` calls one and stores what it returns.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from edgeship.core.errors import EdgeshipError, InputError
from edgeship.core.runstore import RunDir

# device -> ("module:function", what to do when it is missing)
DRIVERS: dict[str, tuple[str, str]] = {
    "host": ("edgeship.benchmarks.host:bench_host", "reinstall edgeship"),
    "browser": ("edgeship.benchmarks.browser_bench:bench_browser",
                "the browser driver is not installed in this checkout"),
    "pi": ("edgeship.devices.bench:bench_pi", "the Raspberry Pi driver is not installed in this checkout"),
    "fleet": ("edgeship.devices.fleet.bench:bench_fleet",
              "the fleet driver (TVM's RPC tracker) is not installed in this checkout"),
}


class DriverUnavailableError(EdgeshipError):
    """``--on X`` names a device whose driver is missing or cannot be imported."""


def get_driver(on: str) -> Callable[..., list[dict[str, Any]]]:
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
    *,
    label: str | None = None,
    save: bool = True,
    **options: Any,
) -> list[dict[str, Any]]:
    """Run the driver for ``on`` with ``options``, store its results, return them.

    Results a driver already stored itself (same file, same content) are not stored twice.
    """
    driver = get_driver(on)
    results = driver(run, **options)
    if not isinstance(results, list) or not results:
        raise EdgeshipError(f"the {on} driver returned no results; nothing was measured")
    if save and not already_saved(run, results):
        from edgeship.benchmarks.store import save_results

        save_results(run, results, label=label or on)
    return results


def already_saved(run: RunDir, results: list[dict[str, Any]]) -> bool:
    """True when every result is in ``bench/`` already with the same measurements."""
    from edge_runtime.result import result_name
    from edgeship.core.fsutil import read_json

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
