"""The ``--on browser`` driver: web bundles measured in headless Chromium, in interleaved rounds.

The method is the device session's (``edge_runtime.rounds``), step by step, with the page as the
runtime: one page per (bundle, thread count), all open in one browser; accuracy on the whole raw
test split in the page (untimed); k calls per sample from the page's measured timer step
(``edge_runtime.sampling.calls_per_sample``); then ``rounds`` rounds in ``round_order``, each
page timing ``runs`` samples of k calls (and single calls for the tail) with ``performance.now()``
inside the page; the numbers are summarised by ``edge_runtime.stats.summarize_rounds``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeship.benchmarks.browser import BACKEND, BrowserDriver, DemoPage, _sync_playwright, find_chromium
from edgeship.benchmarks.harness import Artifact, check_counts, parse_threads, select_artifacts
from edgeship.benchmarks.webserver import BundleServer
from edgeship.core.console import Progress
from edgeship.core.runstore import RunDir

CALIBRATION_CALLS = 50  # back-to-back calls whose mean tells k how long one call takes
CALIBRATION_WARMUP = 100  # a fresh page's first calls are slow (JIT, thread start): not the call time


@dataclass
class PageConfig:
    """One bundle at one thread count, open in a page, and what its rounds measured (ms)."""

    art: Artifact
    threads: int
    page: DemoPage
    env: dict[str, Any]
    k: int = 1
    rounds: list[list[float]] = field(default_factory=list)
    single: list[float] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return f"{self.art.variant}/{self.art.name} t{self.threads}"


def bench_browser(
    run: RunDir,
    *,
    variants: str | Sequence[str] = "all",
    formats: str | Sequence[str] = "all",
    threads: str | Sequence[int] | int = (1, 2),
    runs: int = 200,
    warmup: int = 20,
    rounds: int = 5,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    evaluate: bool = True,
    chromium: str | os.PathLike[str] | None = None,
    timeout_s: float = 120.0,
) -> list[dict[str, Any]]:
    """Every passing web bundle of ``run``, one schema result per thread count (not stored)."""
    from edgeship.export.stage import list_artifacts, load_raw_test
    from edgeship.export.web import bundle_dir

    check_counts(runs, warmup, rounds)
    counts = parse_threads(threads)
    say = log or (lambda _m: None)
    executable = find_chromium(chromium)  # first: a missing browser names its Debian package
    _sync_playwright()
    if not any(m.get("format") == "web" and not m.get("failed") for m in list_artifacts(run)):
        bundle_dir(run, "base")  # raises, naming the export command that makes a bundle
    artifacts = select_artifacts(run, variants, formats, allowed_formats=("web",), log=say)
    test = load_raw_test(run) if evaluate else None
    if evaluate and test is None:
        say(f"run {run.id} has no raw test split (data/test_raw.*): accuracy comes from export validation")
    with _pages(artifacts, counts, executable, timeout_s, say) as configs:
        for c in configs:
            _evaluate(c, configs, test)
            c.k = _calibrate(c.page, c.env)
        done = 0
        from edge_runtime.rounds import round_order

        for r in range(rounds):
            for c in round_order(configs, r):
                bench = c.page.benchmark(warmup, runs, calls_per_sample=c.k)
                c.rounds.append([float(v) for v in bench["latencies_ms"]])
                if c.k > 1:
                    single = c.page.benchmark(0, runs, calls_per_sample=1)
                    c.single.extend(float(v) for v in single["latencies_ms"])
                done += 1
                if progress is not None:
                    progress.update(1, f"round {r + 1}/{rounds} {c.label}")
        e2e = {id(c): c.page.benchmark(warmup, runs, end_to_end=True).get("end_to_end_summary")
               for c in configs}
        return [_result(run, c, warmup, e2e[id(c)]) for c in configs]


def plan_size(run: RunDir, variants: str | Sequence[str] = "all", formats: str | Sequence[str] = "all",
              threads: str | Sequence[int] | int = (1, 2), rounds: int = 5) -> int:
    """How many measurements ``bench_browser`` will make (for a progress bar's total)."""
    found = select_artifacts(run, variants, formats, allowed_formats=("web",))
    return len(found) * len(parse_threads(threads)) * rounds


@contextlib.contextmanager
def _pages(
    artifacts: Sequence[Artifact], counts: Sequence[int], executable: str, timeout_s: float,
    say: Callable[[str], None],
) -> Iterator[list[PageConfig]]:
    """One browser, a server per bundle, a page per (bundle, thread count), all closed on exit."""
    servers: list[BundleServer] = []
    with BrowserDriver(artifacts[0].dir, chromium=executable, timeout_s=timeout_s) as driver:
        try:
            configs = []
            for art in artifacts:
                server = BundleServer(art.dir, port=0).start()
                servers.append(server)
                for n in counts:
                    page = driver.open_url(server.url, threads=n)
                    env = page.env()
                    if env["threads"] != n or not env["cross_origin_isolated"]:
                        say(f"{art.rel}: asked for {n} threads, the page ran {env['threads']} "
                            f"(cross-origin isolated: {env['cross_origin_isolated']})")
                    configs.append(PageConfig(art=art, threads=n, page=page, env=env))
            yield configs
        finally:
            for s in servers:
                s.stop()


def _evaluate(c: PageConfig, configs: list[PageConfig], test: dict[str, Any] | None) -> None:
    """The test split through the bundle's first page (the others share its result)."""
    if test is None:
        return
    import numpy as np

    for other in configs:
        if other.art is c.art and other.evaluation is not None:
            c.evaluation = other.evaluation
            return
    ev = c.page.evaluate(test["x"], test["y"])
    y = np.asarray(test["y"], dtype=np.int64)
    c.evaluation = {"samples": ev["n"], "source": test.get("source"), "accuracy": ev["accuracy"],
                    "threads": c.threads, "predictions": [int(p) for p in ev["predictions"]],
                    "labels_match": len(y) == ev["n"]}


def _calibrate(page: DemoPage, env: dict[str, Any]) -> int:
    """k for this page: its timer step against the mean of many back-to-back calls."""
    from edge_runtime.sampling import calls_per_sample

    probe = page.benchmark(CALIBRATION_WARMUP, 5, calls_per_sample=CALIBRATION_CALLS)
    call_ms = min(probe["latencies_ms"])  # the least disturbed: k errs on the side of more calls
    return calls_per_sample(env.get("timer_resolution_ms"), call_ms)


def _result(run: RunDir, c: PageConfig, warmup: int, e2e: dict[str, Any] | None) -> dict[str, Any]:
    """One page's rounds in the schema of ``edge_runtime.result`` (plus the browser's facts)."""
    from edge_runtime.result import LATENCY_KEYS, SCHEMA_VERSION, device_id, require_valid
    from edge_runtime.stats import summarize_rounds
    from edge_runtime.timing import PERCENTILE_METHOD, device_facts
    from edgeship.benchmarks.evaluation import finish_evaluation

    env, meta = c.env, c.art.meta
    step_ms = env.get("timer_resolution_ms")
    timing = summarize_rounds([[v * 1e6 for v in r] for r in c.rounds],
                              [v * 1e6 for v in (c.single or [v for r in c.rounds for v in r])],
                              calls_per_sample=c.k, clock_step_ns=step_ms * 1e6 if step_ms else None)
    device = {**device_facts(), "browser": env.get("browser", "chromium"),
              "browser_version": env.get("browser_version")}
    notes = [] if step_ms else ["the page's timer step could not be measured: one call per sample"]
    accuracy = None if c.evaluation is None else c.evaluation["accuracy"]
    result = {
        "schema_version": SCHEMA_VERSION,
        "on": "browser",
        "device_id": device_id("browser", device),
        "run_id": run.id,
        "model": meta.get("model"),
        "variant": c.art.variant,
        "artifact": c.art.rel,
        "format": "web",
        "quantize": meta.get("quantize"),
        "target": meta.get("target"),
        "backend": BACKEND,
        "backend_version": env.get("ort_version"),
        "execution_provider": env.get("execution_provider"),
        "threads": env["threads"],
        "threads_requested": c.threads,
        "batch": 1,
        "warmup": warmup,
        **timing,
        "end_to_end_ms": {k: round(float(e2e[k]), 6) for k in LATENCY_KEYS} if e2e else None,
        "init_ms": None if env.get("init_ms") is None else round(float(env["init_ms"]), 3),
        "first_ms": None if env.get("first_ms") is None else round(float(env["first_ms"]), 3),
        "peak_rss_mb": None,  # the browser's processes are not ours to measure
        "bytes": meta.get("bytes"),
        "accuracy": accuracy if accuracy is not None else (meta.get("validation") or {}).get("accuracy"),
        "accuracy_source": "device" if accuracy is not None else (
            "export validation" if (meta.get("validation") or {}).get("accuracy") is not None else None),
        "evaluation": c.evaluation,
        "browser": env.get("browser", "chromium"),
        "browser_version": env.get("browser_version"),
        "user_agent": env.get("user_agent"),
        "simd": env.get("simd"),
        "cross_origin_isolated": env.get("cross_origin_isolated"),
        "graph_optimization_level": env.get("graph_optimization_level"),
        "device": device,
        "percentile_method": PERCENTILE_METHOD,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "notes": notes,
    }
    return require_valid(finish_evaluation(run, result))


__all__ = ["bench_browser", "plan_size"]


