"""Two browser runtimes per web bundle in the report: distinct result files, verdicts per runtime,
and one "ship this" line that picks across runtimes (fast: no browser, schema-valid results)."""

from __future__ import annotations

from pathlib import Path

from test_report import WEB, result

from edge_runtime.result import result_name
from edgeship.benchmarks.store import save_results
from edgeship.core.runstore import RunStore
from edgeship.devices.browser.session import bundle_measurements, measurements_files
from edgeship.report import build_report, recommendations

RUNTIMES = {"ort": ("onnxruntime-web", "1.30.0"), "litert": ("litert.js", "2.5.3")}
P50 = {("web", "ort"): 3.2, ("web", "litert"): 1.9, ("web-int8", "ort"): 4.0, ("web-int8", "litert"): 1.3}


def _results() -> list[dict]:
    out = []
    for (bundle, key), p50 in P50.items():
        backend, version = RUNTIMES[key]
        out.append(result(variant="base", artifact=f"{bundle}-{key}", p50=p50, **{
            **WEB, "backend": backend, "backend_version": version, "runtime": backend,
            "bundle": f"exports/base/{bundle}", "accelerator": "wasm",
            "quantize": "int8" if bundle.endswith("int8") else "float32"}))
    return out


def test_two_runtimes_get_two_files_and_the_faster_ships(tmp_path: Path) -> None:
    results = _results()
    names = {result_name(r) for r in results}
    assert len(names) == 4 and any(n.endswith("-base-web-int8-litert-t1") for n in names)
    (rec,) = recommendations(results)
    assert (rec["artifact"], rec["backend"]) == ("web-int8-litert", "litert.js")
    assert rec["runner_up"]["artifact"] == "web-litert"  # a different artifact, not the same runtime again
    with RunStore(tmp_path / "runs").new_run("fake", seed=0) as run, run.stage("export") as st:
        for bundle in ("web", "web-int8"):
            st.output_dir(f"exports/base/{bundle}")
    save_results(run, results, label="browser", beside=measurements_files(results))
    assert sorted(p.name for p in (run.path / "bench").iterdir()) == sorted(f"{n}.json" for n in names)
    # Each bundle learns its measured runtime: the page opens with it.
    for bundle, best in (("web", ("litert.js", 1.9)), ("web-int8", ("litert.js", 1.3))):
        m = (run.path / "exports/base" / bundle / "measurements.json").read_text()
        assert f'"runtime": "{best[0]}"' in m and f'"p50_ms": {best[1]}' in m
    (dev,) = build_report(run).devices
    assert any(v.startswith("web-litert: int8 is 1.5x faster than float32") for v in dev.verdicts)
    assert any(v.startswith("web-ort: int8 is slower than float32") for v in dev.verdicts)


def test_bundle_measurements_keep_accuracy_first() -> None:
    results = _results()
    for r in results:  # the fastest runtime lost accuracy: the recommendation passes over it
        if r["artifact"].endswith("web-int8-litert"):
            r["accuracy"] = 0.90
    m = bundle_measurements(results)["exports/base/web-int8"]
    assert m["recommended"]["runtime"] == "onnxruntime-web" and len(m["results"]) == 2
