"""Drive the web bundle in headless Chromium and bring back plain numbers.

The page itself times ``session.run`` with ``performance.now()`` (``window.edgeship.benchmark``),
so what is measured is the browser's WebAssembly, not Playwright's round trips. One server
and one browser serve every thread count: onnxruntime-web fixes its thread count when
WebAssembly starts, so each count gets a fresh page opened with ``?threads=N``. A page that
cannot load its model sets ``window.edgeship.error``; we poll for it, so that error comes
back at once instead of a timeout.

The system Chromium is used (Debian package ``chromium``); never ``playwright install``.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

from edgeship.core.errors import EdgeshipError, MissingDependencyError
from edgeship.devices.browser.server import BundleServer
from edgeship.export.web import unavailable_reason

CHROMIUM = "/usr/bin/chromium"
ENV_CHROMIUM = "EDGESHIP_CHROMIUM"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BACKEND = "onnxruntime-web"  # the default runtime of bundles made before LiteRT.js
RUNTIME_KEYS = {"onnxruntime-web": "ort", "litert.js": "litert"}  # bundle.json names -> ?runtime=
EVAL_CHUNK = 256  # inputs per page.evaluate call: keeps each message small


class BrowserPageError(EdgeshipError):
    """The demo page reported an error (model load, bad input); the message is the page's."""


def find_chromium(path: str | os.PathLike[str] | None = None) -> str:
    """The Chromium binary to drive: ``path``, $EDGESHIP_CHROMIUM, /usr/bin/chromium or PATH."""
    candidates = [path] if path else [os.environ.get(ENV_CHROMIUM), CHROMIUM, shutil.which("chromium")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return str(c)
    where = f" at {path}" if path else ""
    raise MissingDependencyError(
        f"Chromium not found{where}; install the Debian package `chromium` "
        "(apt-get install -y chromium) or set EDGESHIP_CHROMIUM to the binary"
    )


def _sync_playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise MissingDependencyError(
            "Python package `playwright` is missing; pip install playwright "
            "(it drives the system Chromium: do not run `playwright install`)"
        ) from None
    return sync_playwright


class _SharedPlaywright(threading.local):
    """One Playwright per thread, counted: its sync API refuses a second one in the same thread,
    and a test may hold one driver open while a library call opens another."""

    pw: Any = None
    users: int = 0

    def acquire(self) -> Any:
        if self.pw is None:
            self.pw = _sync_playwright()().start()
        self.users += 1
        return self.pw

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0 and self.pw is not None:
            pw, self.pw, self.users = self.pw, None, 0
            pw.stop()


_PLAYWRIGHT = _SharedPlaywright()


def _pw_errors() -> tuple[type[Exception], type[Exception]]:
    from playwright.sync_api import Error, TimeoutError

    return Error, TimeoutError


def _jsonable(obj: Any) -> Any:
    """numpy arrays/scalars to lists/numbers and NaN to None, as page.evaluate needs."""
    if hasattr(obj, "tolist") and not isinstance(obj, int | float | bool | str):
        obj = obj.tolist()
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if type(obj).__name__ in {"NAType", "NaTType"}:
        return None
    return obj


class DemoPage:
    """One open page of the bundle; every method calls ``window.edgeship`` inside it."""

    def __init__(self, page: Any, url: str, browser_version: str) -> None:
        self.page = page
        self.url = url
        self.browser_version = browser_version
        self.console: list[str] = []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def wait_ready(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Wait until the model is loaded; raise BrowserPageError with the page's own message."""
        cond = (
            "() => window.edgeship && (window.edgeship.error !== null"
            " || document.documentElement.dataset.state === 'ready')"
        )
        _, pw_timeout = _pw_errors()
        try:
            self.page.wait_for_function(cond, polling=100, timeout=timeout_s * 1000)
        except pw_timeout:
            tail = "; ".join(self.console[-5:]) or "no console output"
            raise BrowserPageError(
                f"the demo page at {self.url} was not ready after {timeout_s:.0f} s ({tail})"
            ) from None
        error = self.page.evaluate("() => window.edgeship.error")
        if error:
            raise BrowserPageError(f"the demo page failed: {error}")
        return self.env()

    def _call(self, script: str, arg: Any = None) -> Any:
        pw_error, _ = _pw_errors()
        try:
            return self.page.evaluate(script, arg)
        except pw_error as e:  # a throw inside the page
            message = str(e).split("\n")[0].removeprefix("Error: ")
            raise BrowserPageError(f"the demo page failed: {message}") from None

    def env(self) -> dict[str, Any]:
        """The page's environment plus the browser's name and version."""
        env = self._call("() => window.edgeship.env()")
        return {"browser": "chromium", "browser_version": self.browser_version, **env}

    def predict(self, raw: Any, preprocessed: bool = False) -> dict[str, Any]:
        return self._call(
            "([x, p]) => window.edgeship.predict(x, {preprocessed: p})",
            [_jsonable(raw), preprocessed],
        )

    def preprocess(self, raw: Any) -> list[float]:
        return self._call("(x) => window.edgeship.preprocess(x)", _jsonable(raw))

    def benchmark(
        self,
        warmup: int = 20,
        runs: int = 200,
        calls_per_sample: int = 1,
        preallocate_output: bool = True,
        end_to_end: bool = False,
    ) -> dict[str, Any]:
        """Raw latencies (ms) of ``runs`` timed batch-1 samples after ``warmup``, and their summary.

        ``calls_per_sample`` > 1 times that many back-to-back calls per sample (their mean):
        Chromium's timer has 5 us steps, coarse for models that take tens of microseconds.
        ``end_to_end`` also times raw input -> top-1 (``end_to_end_ms``, ``end_to_end_summary``).
        """
        return self._call(
            "([w, r, k, p, e]) => window.edgeship.benchmark("
            "{warmup: w, runs: r, callsPerSample: k, preallocateOutput: p, endToEnd: e})",
            [warmup, runs, calls_per_sample, preallocate_output, end_to_end],
        )

    def evaluate(
        self,
        xs: Sequence[Any],
        ys: Sequence[Any] | None = None,
        preprocessed: bool = False,
        return_probabilities: bool = False,
    ) -> dict[str, Any]:
        """Top-1 predictions (and accuracy when ``ys`` is given) over ``xs``, run in the page."""
        xs = _jsonable(xs)
        ys = _jsonable(ys) if ys is not None else None
        predictions: list[int] = []
        probabilities: list[list[float]] = []
        correct = 0
        total_ms = 0.0
        for i in range(0, len(xs), EVAL_CHUNK):
            part = self._call(
                "([x, y, p, r]) => window.edgeship.evaluate(x, y,"
                " {preprocessed: p, returnProbabilities: r})",
                [
                    xs[i : i + EVAL_CHUNK],
                    ys[i : i + EVAL_CHUNK] if ys is not None else None,
                    preprocessed,
                    return_probabilities,
                ],
            )
            predictions += part["predictions"]
            probabilities += part.get("probabilities") or []
            correct += part["correct"] or 0
            total_ms += part["total_ms"]
        out: dict[str, Any] = {
            "n": len(xs),
            "accuracy": correct / len(xs) if ys is not None and xs else None,
            "correct": correct if ys is not None else None,
            "predictions": predictions,
            "total_ms": total_ms,
        }
        if return_probabilities:
            out["probabilities"] = probabilities
        return out

    def screenshot(self, path: str | os.PathLike[str], full_page: bool = True) -> Path:
        self.page.screenshot(path=str(path), full_page=full_page)
        return Path(path)

    def close(self) -> None:
        self.page.close()


class BrowserDriver:
    """A bundle served on 127.0.0.1 (free port) and a headless Chromium to open it in.

    ``with BrowserDriver(bundle) as d: page = d.open(threads=2)``. Playwright gives the browser
    a fresh temporary profile, removed on close.
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike[str],
        *,
        chromium: str | os.PathLike[str] | None = None,
        headless: bool = True,
        timeout_s: float = 60.0,
        viewport: tuple[int, int] = (1280, 900),
    ) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.executable = find_chromium(chromium)
        self.headless = headless
        self.timeout_s = timeout_s
        self.viewport = viewport
        self.server: BundleServer | None = None
        self._pw: Any = None
        self._browser: Any = None

    def __enter__(self) -> BrowserDriver:
        _sync_playwright()  # a missing package is reported before anything starts
        self.server = BundleServer(self.bundle_dir, port=0).start()
        try:
            self._pw = _PLAYWRIGHT.acquire()
            self._browser = self._pw.chromium.launch(
                executable_path=self.executable, headless=self.headless, args=CHROMIUM_ARGS
            )
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def browser_version(self) -> str:
        return str(self._browser.version) if self._browser else ""

    def url(self, threads: int | None = None, opt: str | None = None) -> str:
        assert self.server is not None, "use BrowserDriver as a context manager"
        query = {k: v for k, v in {"threads": threads, "opt": opt}.items() if v is not None}
        return self.server.url + (f"?{urlencode(query)}" if query else "")

    def open(
        self, threads: int | None = None, opt: str | None = None, wait: bool = True,
        runtime: str | None = None, accelerator: str | None = None,
    ) -> DemoPage:
        """A new page with ``?threads=N`` (``?opt=LEVEL``, ``?runtime=ort|litert``,
        ``?accelerator=wasm|webgpu``); waits for the model by default."""
        assert self.server is not None, "use BrowserDriver as a context manager"
        return self.open_url(self.server.url, threads, opt, wait, runtime, accelerator)

    def open_url(
        self, base: str, threads: int | None = None, opt: str | None = None, wait: bool = True,
        runtime: str | None = None, accelerator: str | None = None,
    ) -> DemoPage:
        """A page of another bundle's server in this browser (one browser, many bundles)."""
        if self._browser is None:
            raise RuntimeError("use BrowserDriver as a context manager")
        page = self._browser.new_page(
            viewport={"width": self.viewport[0], "height": self.viewport[1]}
        )
        query = {k: v for k, v in {"runtime": runtime, "accelerator": accelerator, "threads": threads,
                                    "opt": opt}.items() if v is not None}
        url = base + (f"?{urlencode(query)}" if query else "")
        demo = DemoPage(page, url, self.browser_version)
        response = page.goto(url, wait_until="domcontentloaded", timeout=self.timeout_s * 1000)
        if response is not None and not response.ok:
            raise BrowserPageError(f"{url} answered HTTP {response.status}; is it a web bundle?")
        if wait:
            demo.wait_ready(self.timeout_s)
        return demo

    def close(self) -> None:
        if self._browser is not None:
            self._browser.close()
            self._browser = None
        if self._pw is not None:
            self._pw = None
            _PLAYWRIGHT.release()
        if self.server is not None:
            self.server.stop()
            self.server = None


@contextmanager
def open_demo(
    bundle_dir: str | os.PathLike[str], threads: int | None = None, **kwargs: Any
) -> Iterator[DemoPage]:
    """One ready page of ``bundle_dir`` in headless Chromium, closed on exit."""
    with BrowserDriver(bundle_dir, **kwargs) as driver:
        yield driver.open(threads=threads)


def run_browser_benchmarks(
    bundle_dir: str | os.PathLike[str],
    threads: Sequence[int] = (1,),
    *,
    warmup: int = 20,
    runs: int = 200,
    xs: Sequence[Any] | None = None,
    ys: Sequence[Any] | None = None,
    preprocessed: bool = False,
    opt: str | None = None,
    calls_per_sample: int = 1,
    chromium: str | os.PathLike[str] | None = None,
    timeout_s: float = 60.0,
    runtime: str | None = None,
) -> list[dict[str, Any]]:
    """One result per thread count: latencies, summary, env, and accuracy/predictions on ``xs``.

    ``xs`` are raw inputs (the page applies the bundle's preprocessing) unless ``preprocessed``.
    ``runtime`` (ort, litert) picks the page's runtime; by default the page's own choice.
    """
    results = []
    with BrowserDriver(bundle_dir, chromium=chromium, timeout_s=timeout_s) as driver:
        for n in threads:
            page = driver.open(threads=n, opt=opt, runtime=runtime)
            try:
                bench = page.benchmark(warmup, runs, calls_per_sample=calls_per_sample)
                env = page.env()
                evaluation = page.evaluate(xs, ys, preprocessed) if xs is not None else None
            finally:
                page.close()
            results.append(
                {
                    "backend": env.get("runtime") or BACKEND,
                    "accelerator": env.get("accelerator"),
                    "threads": env["threads"],
                    "threads_requested": n,
                    "latencies_ms": bench["latencies_ms"],
                    "summary": bench["summary"],
                    "options": bench["options"],
                    "env": env,
                    "accuracy": evaluation["accuracy"] if evaluation else None,
                    "predictions": evaluation["predictions"] if evaluation else None,
                    "n_eval": evaluation["n"] if evaluation else 0,
                }
            )
    return results


def run_browser_benchmark(
    bundle_dir: str | os.PathLike[str], threads: int = 1, **kwargs: Any
) -> dict[str, Any]:
    """``run_browser_benchmarks`` for one thread count."""
    return run_browser_benchmarks(bundle_dir, (threads,), **kwargs)[0]


def browser_unavailable_reason(chromium: str | os.PathLike[str] | None = None) -> str | None:
    """Why ``bench --on browser`` cannot run here (one line naming what to install), or None.

    For callers that include the browser only when it is there (``edgeship run``): Chromium,
    the Playwright package and the pinned onnxruntime-web under web_demo/node_modules.
    """
    try:
        find_chromium(chromium)
        _sync_playwright()
    except MissingDependencyError as e:
        return str(e)
    return unavailable_reason()


__all__ = [
    "BACKEND",
    "CHROMIUM_ARGS",
    "BrowserDriver",
    "BrowserPageError",
    "DemoPage",
    "browser_unavailable_reason",
    "find_chromium",
    "open_demo",
    "run_browser_benchmark",
    "run_browser_benchmarks",
]
