"""Shared fixtures (tiny real models and runs, made once per test session) and the CI skip rule.

Under ``CI=true`` a skipped test fails the run unless it carries
``@pytest.mark.allowed_skip(reason="...")``: a missing Chromium, sshd or QEMU, or an import error,
must not turn the important tests into a green run. The allowed skips are listed at the end.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from edgeship.core.runstore import RunDir, RunStore

# The checkout's root holds the stage folders (export/, training/, ...): on sys.path (as
# `python -m pytest` from the root puts it) they would import as second copies of edgeship's
# stages. The tests see the installed names only; `./dev test` runs `python -P` for the same reason.
sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd()) or not Path(p, "export").is_dir()]


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """A real CNN trained briefly on digits: the run later stages start from."""
    from edgeship.training.stage import TrainConfig, train

    store = RunStore(tmp_path_factory.mktemp("digits-runs"))
    return train(store, TrainConfig(epochs=12, patience=4, seed=0)).run


@pytest.fixture(scope="session")
def tabular_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """A real MLP trained briefly on the wine table."""
    from edgeship.training.stage import TrainConfig, train

    store = RunStore(tmp_path_factory.mktemp("wine-runs"))
    return train(store, TrainConfig(dataset="wine", epochs=40, patience=8, seed=0)).run


@pytest.fixture()
def runs_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


# Fixtures that train a model: a test that uses one (directly or through another fixture) is slow.
TRAINING_FIXTURES = frozenset({"digits_run", "tabular_run"})


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs a trained model ``slow``, so `./dev test --fast` (``-m "not
    slow"``) leaves out the training and stays the inner loop (before ``-m`` selects)."""
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# -- CI: a skip is a failure unless allowed --------------------------------------------------

ALLOWED_SKIP = "allowed_skip"


def ci_strict() -> bool:
    """CI=true (or 1/yes, as CI services set it): skips must be allowed explicitly."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _skip_reason(report: Any) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _allowed_reason(item: pytest.Item) -> str | None:
    """The allowed-skip marker's reason; a marker without one does not count."""
    marker = item.get_closest_marker(ALLOWED_SKIP)
    if marker is None:
        return None
    reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
    return str(reason).strip() or None


_allowed: list[tuple[str, str]] = []  # (nodeid, "the marker's reason (what the skip said)")


def pytest_configure(config: pytest.Config) -> None:
    """The marker, also where pyproject's list is not read (this file loaded as a plugin)."""
    config.addinivalue_line("markers", f"{ALLOWED_SKIP}(reason): may skip under CI=true, for that reason")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Under CI, a test's skip (skipif, pytest.skip, importorskip) without the marker fails it."""
    outcome = yield
    report = outcome.get_result()
    if not (ci_strict() and report.skipped) or hasattr(report, "wasxfail"):
        return
    said = _skip_reason(report)
    allowed = _allowed_reason(item)
    if allowed is not None:  # carried on the report: under xdist, the summary is the controller's
        report.user_properties.append((ALLOWED_SKIP, f"{allowed} ({said})"))
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI=true ({said}); a CI run must not pass by skipping: install "
                       "what the test needs (./dev setup), or mark a skip this machine cannot avoid "
                       "with @pytest.mark.allowed_skip(reason=...)")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    """Under CI, a module that skips itself while collected (a module-level importorskip) fails."""
    outcome = yield
    report = outcome.get_result()
    if ci_strict() and report.skipped:
        said = _skip_reason(report)
        report.outcome = "failed"
        report.longrepr = (f"{collector.nodeid} skipped while collected under CI=true ({said}): an "
                           "import error or a missing tool must fail the run, not skip it")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _allowed.extend((report.nodeid, text) for key, text in report.user_properties if key == ALLOWED_SKIP)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """List the allowed skips, so a CI log says what did not run and why."""
    if not ci_strict():
        return
    tr = terminalreporter
    tr.section(f"allowed skips under CI ({len(_allowed)})")
    for nodeid, text in _allowed:
        tr.write_line(f"{nodeid}: {text}")
