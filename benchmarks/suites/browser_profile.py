"""Where a browser runtime's time goes: a CPU profile of the page while it benchmarks.

Chromium's sampling profiler (DevTools protocol ``Profiler``, 50 us interval) runs on the page's
main thread while ``window.edgeship.benchmark`` times the model; the samples are grouped into
WebAssembly functions (the runtime's compiled kernels: XNNPACK for LiteRT.js, onnxruntime's MLAS
for onnxruntime-web; their names are stripped, so they appear as ``wasm-function[i]``), the
JavaScript around them (the runtime's bindings, tensors, the page), and idle or waiting time (the
main thread blocked on worker threads, or between calls). A gap that is mostly kernel time is a
kernel speed gap (WebAssembly's 128-bit SIMD against the native build's wider vectors); one that
is mostly JavaScript is per-call overhead.
"""

from __future__ import annotations

import collections
from typing import Any

INTERVAL_US = 50


def profile_page(page: Any, runs: int = 300, top: int = 3) -> dict[str, Any]:
    """Profile ``runs`` benchmark calls of an open, ready ``DemoPage``: shares of kernel, JS, idle."""
    cdp = page.page.context.new_cdp_session(page.page)
    try:
        cdp.send("Profiler.enable")
        cdp.send("Profiler.setSamplingInterval", {"interval": INTERVAL_US})
        cdp.send("Profiler.start")
        bench = page.benchmark(0, runs)
        prof = cdp.send("Profiler.stop")["profile"]
    finally:
        cdp.detach()
    hits: collections.Counter[tuple[str, str]] = collections.Counter()
    for node in prof["nodes"]:
        frame = node["callFrame"]
        key = (frame["functionName"] or "(anonymous)", frame["url"].rsplit("/", 1)[-1])
        hits[key] += node.get("hitCount", 0)
    total = sum(hits.values()) or 1
    groups: collections.Counter[str] = collections.Counter()
    for (name, url), n in hits.items():
        groups[_group(name, url)] += n
    kernels = [(name, n / total) for (name, url), n in hits.most_common() if name.startswith("wasm-function")]
    return {
        "p50_ms": bench["summary"]["p50"],
        "samples": total,
        "shares": {k: v / total for k, v in groups.most_common()},
        "top_kernels": kernels[:top],
    }


def _group(name: str, url: str) -> str:
    if name.startswith("wasm-function"):
        return "WebAssembly kernels"
    if name in {"(idle)", "(program)"} or "Atomics" in name:
        return "idle or waiting"
    if name == "(garbage collector)":
        return "garbage collector"
    return "JavaScript (runtime bindings, tensors, page)"


def profile_line(label: str, prof: dict[str, Any]) -> str:
    """One line: ``profile <label>: p50 X ms; 81% WebAssembly kernels (top 3: 51%, 20%, 8%), ...``."""
    shares = "; ".join(f"{v:.0%} {k}" for k, v in prof["shares"].items() if v >= 0.005)
    top = ", ".join(f"{share:.0%}" for _, share in prof["top_kernels"])
    return (f"  profile {label}: p50 {prof['p50_ms']:.4f} ms over {prof['samples']} samples of "
            f"{INTERVAL_US} us; {shares}; hottest kernels {top}")
