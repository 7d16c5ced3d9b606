"""Skip a browser test, with the reason, only where Chromium or the web runtimes are not installed.

`./dev test` installs both (Debian's chromium, `npm ci` in web_demo/), so CI runs every browser test;
under CI=true such a skip fails the run (tests/conftest.py). ``EDGESHIP_TEST_HIDE_CHROMIUM=1``
makes the tests behave as on a machine without Chromium, to check that rule.
"""

from __future__ import annotations

import os

import pytest

HIDE_CHROMIUM = "EDGESHIP_TEST_HIDE_CHROMIUM"


def browser_or_skip() -> None:
    """Skip (a failure under CI=true) where Chromium, playwright or the web runtimes are missing."""
    if os.environ.get(HIDE_CHROMIUM, "") not in ("", "0"):
        pytest.skip(f"Chromium hidden by {HIDE_CHROMIUM}")
    pytest.importorskip("playwright.sync_api")
    from edgeship.core.errors import MissingDependencyError
    from edgeship.devices.browser.chromium import find_chromium
    from edgeship.export.web import unavailable_reason

    try:
        find_chromium()
    except MissingDependencyError as e:
        pytest.skip(str(e))
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
