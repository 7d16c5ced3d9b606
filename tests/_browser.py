"""Skip a browser test, with the reason, only where Chromium or the web runtimes are not installed.

`./dev test` installs both (Debian's chromium, `npm ci` in web_demo/), so CI runs every browser test.
"""

from __future__ import annotations

import pytest


def browser_or_skip() -> None:
    pytest.importorskip("playwright.sync_api")
    from edgeship.benchmarks.browser import find_chromium
    from edgeship.core.errors import MissingDependencyError
    from edgeship.export.web import unavailable_reason

    try:
        find_chromium()
    except MissingDependencyError as e:
        pytest.skip(str(e))
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
