"""The ``--on browser`` driver: web bundles measured in headless Chromium, in interleaved rounds.

The method is the device session's (``edge_runtime.rounds``), step by step, with the page as the
runtime: one page per (bundle, runtime, accelerator, thread count), all open in one browser. A
bundle carries up to two runtimes (onnxruntime-web and LiteRT.js, bundle.json ``runtimes``); each
available one is measured, on WebAssembly and, where the browser offers a WebGPU adapter, on
WebGPU too (else the results say in one line why not). Accuracy on the whole raw test split in
the page, per runtime (untimed); k calls per sample from the page's measured timer step and the
call time of the warmed-up page (``edge_runtime.sampling.calls_per_sample``); then ``rounds``
rounds in ``round_order``, each page timing ``runs`` samples of k calls (and single calls for the
tail) with ``performance.now()`` inside the page; then the call time is probed again, and a page
whose call time moved more than 2x says so (``calibration.drifted``); the numbers are summarised by
``edge_runtime.stats.summarize_rounds``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.result import LATENCY_KEYS, SCHEMA_VERSION, device_id, require_valid
from edge_runtime.sampling import calls_per_sample
from edge_runtime.timing import PERCENTILE_METHOD, device_facts
from edgeship.benchmarks.harness import Artifact, BenchSettings, select_artifacts
from edgeship.core.console import Progress
from edgeship.core.fsutil import read_json
from edgeship.core.runstore import RunDir
from edgeship.devices.browser.chromium import (
    BACKEND,
    RUNTIME_KEYS,
    BrowserDriver,
    BrowserPageError,
    DemoPage,
    _sync_playwright,
    find_chromium,
)
from edgeship.devices.browser.server import BundleServer
from edgeship.devices.options import BrowserOptions
from edgeship.export.web import bundle_dir
from edgeship.report.model import group_devices
from edgeship.report.recommend import DEFAULT_ACCURACY_BUDGET, TIE_RULE, recommend

# What the page reports about where it ran, copied into every result as is.
PAGE_FACTS = ("browser_version", "user_agent", "simd", "relaxed_simd", "webgpu", "threads_note",
              "cross_origin_isolated", "graph_optimization_level")
CALIBRATION_CALLS = 50  # back-to-back calls whose mean tells k how long one call takes
CALIBRATION_WARMUP = 100  # a fresh page's first calls are slow (JIT, thread start): not the call time
CALIBRATION_SAMPLES = 10  # 50-call means, the least disturbed is one call time estimate
CALIBRATION_SINGLE = 200  # single calls, whose 10th percentile is the other estimate


@dataclass
class PageConfig:
    """One bundle's runtime on one accelerator at one thread count, open in a page, and what its
    rounds measured (ms)."""

    art: Artifact
    threads: int
    page: DemoPage
    env: dict[str, Any]
    runtime: str = BACKEND
    accelerator: str = "wasm"
    k: int = 1
    call_ms: float = 0.0  # the warm call time k was chosen from
    end_call_ms: float | None = None  # the same probe after the rounds
    rounds: list[list[float]] = field(default_factory=list)
    single: list[float] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def suffix(self) -> str:
        """The runtime (and a GPU accelerator) as a name part: ``litert``, ``ort-webgpu``."""
        key = RUNTIME_KEYS.get(self.runtime, self.runtime)
        return key if self.accelerator == "wasm" else f"{key}-{self.accelerator}"

    @property
    def label(self) -> str:
        return f"{self.art.variant}/{self.art.name} {self.suffix} t{self.threads}"


def bench_browser(
    run: RunDir,
    settings: BenchSettings,
    options: BrowserOptions | None = None,
    *,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Every passing web bundle of ``run``, one schema result per thread count (not stored)."""
    from edgeship.export.stage import list_artifacts, load_raw_test

    options = options or BrowserOptions()
    counts, rounds, runs, warmup = settings.threads, settings.rounds, settings.runs, settings.warmup
    say = log or (lambda _m: None)
    executable = find_chromium(options.chromium)  # first: a missing browser names its Debian package
    _sync_playwright()
    if not any(m.get("format") == "web" and not m.get("failed") for m in list_artifacts(run)):
        bundle_dir(run, "base")  # raises, naming the export command that makes a bundle
    artifacts = select_artifacts(run, settings.variants, settings.formats, allowed_formats=("web",), log=say)
    test = load_raw_test(run)
    if test is None:
        say(f"run {run.id} has no raw test split (data/test_raw.*): accuracy comes from export validation")
    with _pages(artifacts, counts, executable, options.timeout_s, say) as configs:
        for c in configs:
            _evaluate(c, configs, test)
        for c in configs:  # after every evaluation: a page still busy would slow another's probe
            c.call_ms = _call_ms(c.page)
            c.k = calls_per_sample(c.env.get("timer_resolution_ms"), c.call_ms)
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
        for c in configs:  # did the call time that set k hold for the whole session?
            c.end_call_ms = _call_ms(c.page)
        e2e = {id(c): c.page.benchmark(warmup, runs, end_to_end=True).get("end_to_end_summary")
               for c in configs}
        return [_result(run, c, warmup, e2e[id(c)]) for c in configs]


def plan_size(run: RunDir, settings: BenchSettings, options: BrowserOptions | None = None) -> int:
    """How many measurements ``bench_browser`` will make on WebAssembly (for a progress bar's total)."""
    found = select_artifacts(run, settings.variants, settings.formats, allowed_formats=("web",))
    return settings.plan_size(1, sum(len(bundle_runtimes(a)) for a in found))


def bundle_runtimes(art: Artifact) -> list[str]:
    """The runtimes a bundle can run (bundle.json ``runtimes``; older bundles: onnxruntime-web)."""
    try:
        manifest = read_json(art.dir / "bundle.json")
    except (OSError, ValueError):
        return [BACKEND]
    rts = manifest.get("runtimes")
    if not isinstance(rts, dict):
        return [BACKEND]
    return [name for name, rt in rts.items() if isinstance(rt, dict) and rt.get("available")]


@contextlib.contextmanager
def _pages(
    artifacts: Sequence[Artifact], counts: Sequence[int], executable: str, timeout_s: float,
    say: Callable[[str], None],
) -> Iterator[list[PageConfig]]:
    """One browser, a server per bundle, a page per (bundle, runtime, accelerator, thread count),
    all closed on exit. WebGPU pages are added only when the browser has an adapter."""
    servers: list[BundleServer] = []
    with BrowserDriver(artifacts[0].dir, chromium=executable, timeout_s=timeout_s) as driver:
        try:
            configs: list[PageConfig] = []
            gpu: dict[str, Any] | None = None
            for art in artifacts:
                server = BundleServer(art.dir, port=0).start()
                servers.append(server)
                for runtime in bundle_runtimes(art):
                    for n in counts:
                        c = _open(driver, server.url, art, runtime, "wasm", n, say)
                        if c is not None:
                            configs.append(c)
                            gpu = gpu or c.env.get("webgpu") or {"available": False, "note": "not reported"}
                    if gpu and gpu.get("available"):
                        c = _open(driver, server.url, art, runtime, "webgpu", counts[0], say)
                        configs.extend([c] if c is not None else [])
            if gpu is not None and not gpu.get("available"):
                line = f"WebGPU {gpu.get('note')}: measured on WebAssembly only"
                say(line)
                for c in configs:
                    c.notes.append(line)
            yield configs
        finally:
            for s in servers:
                s.stop()


def _open(driver: BrowserDriver, url: str, art: Artifact, runtime: str, accelerator: str, n: int,
          say: Callable[[str], None]) -> PageConfig | None:
    """A ready page running ``runtime`` on ``accelerator`` with ``n`` threads, or None (said why)
    when it does not run: a page that fell back to the other runtime is not measured as this one."""
    key = RUNTIME_KEYS.get(runtime, runtime)
    try:
        page = driver.open_url(url, threads=n, runtime=key, accelerator=accelerator)
    except BrowserPageError as e:
        say(f"{art.rel}: {runtime} on {accelerator} did not load: {e}")
        return None
    env = page.env()
    if env.get("runtime", BACKEND) != runtime or env.get("accelerator", "wasm") != accelerator:
        why = (env.get("runtimes") or {}).get(runtime, {}).get("reason") or "it did not load"
        say(f"{art.rel}: {runtime} on {accelerator} not measured: {why}")
        page.close()
        return None
    if env["threads"] != n or not env["cross_origin_isolated"]:
        say(f"{art.rel} {runtime}: asked for {n} threads, the page ran {env['threads']} "
            f"(cross-origin isolated: {env['cross_origin_isolated']})")
    return PageConfig(art=art, threads=n, page=page, env=env, runtime=runtime, accelerator=accelerator)


def _evaluate(c: PageConfig, configs: list[PageConfig], test: dict[str, Any] | None) -> None:
    """The test split through the bundle's first page (the others share its result)."""
    if test is None:
        return
    import numpy as np

    for other in configs:
        if other.art is c.art and other.suffix == c.suffix and other.evaluation is not None:
            c.evaluation = other.evaluation
            return
    ev = c.page.evaluate(test["x"], test["y"])
    y = np.asarray(test["y"], dtype=np.int64)
    c.evaluation = {"samples": ev["n"], "source": test.get("source"), "accuracy": ev["accuracy"],
                    "threads": c.threads, "predictions": [int(p) for p in ev["predictions"]],
                    "labels_match": len(y) == ev["n"]}


def _call_ms(page: DemoPage) -> float:
    """The page's call time after ``CALIBRATION_WARMUP`` calls: the least disturbed of many
    back-to-back 50-call means and the 10th percentile of single calls (on a busy machine a whole
    50-call window can land in a slow moment; a tenth of single calls rarely all do)."""
    import numpy as np

    probe = page.benchmark(CALIBRATION_WARMUP, CALIBRATION_SAMPLES, calls_per_sample=CALIBRATION_CALLS)
    call_ms = min(probe["latencies_ms"])
    single = [v for v in page.benchmark(0, CALIBRATION_SINGLE)["latencies_ms"] if v > 0]
    if len(single) >= 20:  # calls slower than the timer step: their low percentile is meaningful
        call_ms = min(call_ms, float(np.percentile(single, 10)))
    return float(call_ms)


def _result(run: RunDir, c: PageConfig, warmup: int, e2e: dict[str, Any] | None) -> dict[str, Any]:
    """One page's rounds in the schema of ``edge_runtime.result`` (plus the browser's facts)."""
    from edge_runtime.rounds import calibration_record
    from edge_runtime.stats import summarize_rounds
    from edgeship.benchmarks.accuracy import finish_evaluation

    env, meta = c.env, c.art.meta
    step_ms = env.get("timer_resolution_ms")
    timing = summarize_rounds([[v * 1e6 for v in r] for r in c.rounds],
                              [v * 1e6 for v in (c.single or [v for r in c.rounds for v in r])],
                              calls_per_sample=c.k, clock_step_ns=step_ms * 1e6 if step_ms else None)
    device = {**device_facts(), "browser": env.get("browser", "chromium"),
              "browser_version": env.get("browser_version")}
    notes = [] if step_ms else ["the page's timer step could not be measured: one call per sample"]
    notes += c.notes
    calibration, drift_note = calibration_record(
        c.call_ms, c.end_call_ms, CALIBRATION_WARMUP,
        CALIBRATION_SAMPLES * CALIBRATION_CALLS + CALIBRATION_SINGLE, c.k)
    notes += [drift_note] if drift_note else []
    accuracy = None if c.evaluation is None else c.evaluation["accuracy"]
    result = {
        "schema_version": SCHEMA_VERSION,
        "on": "browser",
        "device_id": device_id("browser", device),
        "run_id": run.id,
        "model": meta.get("model"),
        "variant": c.art.variant,
        "artifact": f"{c.art.rel}-{c.suffix}",  # two runtimes per bundle: never one file name
        "bundle": c.art.rel,
        "runtime": c.runtime,
        "format": "web",
        "quantize": meta.get("quantize"),
        "target": meta.get("target"),
        "backend": c.runtime,
        "backend_version": env.get("backend_version") or env.get("ort_version"),
        "accelerator": c.accelerator,
        "execution_provider": env.get("execution_provider"),
        "threads": env["threads"],
        "threads_requested": c.threads,
        "batch": 1,
        "warmup": warmup,
        **timing,
        "calibration": calibration,
        "end_to_end_ms": {k: round(float(e2e[k]), 6) for k in LATENCY_KEYS} if e2e else None,
        "init_ms": None if env.get("init_ms") is None else round(float(env["init_ms"]), 3),
        "first_ms": None if env.get("first_ms") is None else round(float(env["first_ms"]), 3),
        "peak_rss_mb": None,  # the browser's processes are not ours to measure
        "bytes": _model_bytes(c) or meta.get("bytes"),
        "accuracy": accuracy if accuracy is not None else (meta.get("validation") or {}).get("accuracy"),
        "accuracy_source": "device" if accuracy is not None else (
            "export validation" if (meta.get("validation") or {}).get("accuracy") is not None else None),
        "evaluation": c.evaluation,
        "browser": env.get("browser", "chromium"),
        **{k: env.get(k) for k in PAGE_FACTS},
        "device": device,
        "percentile_method": PERCENTILE_METHOD,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "notes": notes,
    }
    return require_valid(finish_evaluation(run, result))


def _model_bytes(c: PageConfig) -> int | None:
    """The size of the model file this runtime loads (the bundle holds one per runtime)."""
    files = (c.art.meta.get("bundle") or {}).get("files") or {}
    model = ((c.art.meta.get("web_runtimes") or {}).get(c.runtime) or {}).get("model")
    entry = files.get(model) if model else None
    return int(entry["bytes"]) if entry else None


def measurements_files(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``measurements.json`` for each measured bundle (run-relative path -> content): the demo page
    opens with the runtime its bundle's results recommend. ``bench_run`` stores them with the results."""
    return {f"{rel}/measurements.json": m for rel, m in bundle_measurements(results).items()}


def bundle_measurements(
    results: Sequence[dict[str, Any]], accuracy_budget: float | None = None
) -> dict[str, dict[str, Any]]:
    """Per bundle folder, what its page reads as ``measurements.json``: every runtime's p50 here
    and the recommended configuration, chosen by the report's own "ship this" rule
    (``edgeship.report.recommend``) on this bundle's results: within the accuracy
    budget, tied with the fastest where intervals overlap, then the smallest file and the fewest
    threads. The demo page opens with it; it holds no rule of its own."""
    budget = DEFAULT_ACCURACY_BUDGET if accuracy_budget is None else accuracy_budget
    by_bundle: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        if r.get("on") == "browser" and r.get("bundle"):
            by_bundle.setdefault(str(r["bundle"]), []).append(r)
    out = {}
    for rel, rs in by_bundle.items():
        device = max(group_devices(rs), key=lambda d: len(d.rows))  # one session: one browser
        rec = recommend(device, budget)
        best = next(r for r in rs if _row_key(r) == (rec["name"], rec["threads"]))
        rows = [{"runtime": r["runtime"], "accelerator": r.get("accelerator"), "threads": r["threads"],
                 "p50_ms": r["latency_ms"]["p50"], "p50_ci_ms": r.get("p50_ci_ms"),
                 "ci_level": r.get("ci_level"), "accuracy": r.get("accuracy")} for r in rs]
        runtime_of = {_row_key(r)[0]: r["runtime"] for r in rs}
        browser = f"{best.get('browser')} {best.get('browser_version') or ''}".strip()
        recommended = {"runtime": best["runtime"], "accelerator": best.get("accelerator"),
                       "threads": best["threads"], "p50_ms": round(best["latency_ms"]["p50"], 4),
                       "p50_ci_ms": best.get("p50_ci_ms"), "ci_level": best.get("ci_level"),
                       "tied_with": [runtime_of.get(t["name"], t["name"]) for t in rec["tied_with"]],
                       "rule": f"the report's ship-this rule: within {budget} accuracy points of the best, "
                               f"tied with the fastest where intervals overlap, then {TIE_RULE}",
                       "line": rec["line"]}
        out[rel] = {"device_id": best.get("device_id"), "browser": browser,
                    "measured_at": best.get("measured_at"), "recommended": recommended, "results": rows}
    return out


def _row_key(r: dict[str, Any]) -> tuple[str, Any]:
    """(variant/artifact leaf, threads): how a report row and its recommendation name a result."""
    leaf = str(r["artifact"]).rstrip("/").rsplit("/", 1)[-1]
    return f"{r.get('variant') or '?'}/{leaf}", r.get("threads")


__all__ = ["bench_browser", "bundle_measurements", "bundle_runtimes", "plan_size"]


