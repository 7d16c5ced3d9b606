"""Render a ``Report`` as text: the method statement, Markdown, CSV, JSON; write the files."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import Any

from edgeship.report import fleet, monitoring, serving
from edgeship.report.fmt import delta_pt, fact, interval, num, pct, sig, size
from edgeship.report.model import Report, Row, ci_methods

OUTPUT_FORMATS = ("table", "md", "html", "json", "csv")

METHOD = (
    "Every configuration (artifact and thread count) is measured in interleaved rounds: each one "
    "once per round, in a rotated order, so a disturbance on the machine touches all of them alike. "
    "Within a round: inputs built and bound before timing, warm-up calls discarded, the garbage "
    "collector paused, a monotonic clock around each sample. A sample is the mean of k back-to-back "
    "calls, k calibrated so that one sample lasts at least 100 steps of the measured clock (each "
    "result records k and the clock step), from the call time of a warm runtime, re-checked at the end "
    "of the session (a call time that moved more than 2x is flagged K). p50 is the median of the "
    "rounds' p50s. Its interval is the distribution-free order-statistic interval for a median, on "
    "the round p50s, whose coverage is exact for the number of rounds and is printed beside every "
    "interval: 50% with 2 rounds, 75% with 3, 93.75% with 5, 97.85% with 10 (the narrowest interval "
    "reaching 95%, else the whole range of the round p50s). A verdict (faster, slower, a flag) is drawn "
    "only when two intervals do not overlap, at their stated levels; overlapping intervals read 'no "
    "measurable difference', and a result of one round (or an old schema 1 result) has no interval and "
    "gets no verdict. Among the artifacts tied with the fastest (intervals overlapping its interval), "
    "'ship this' takes the smallest file, then the most accurate, then the first by name, and never "
    "an artifact whose accuracy is not above the run's zero-rule baseline. The p99 "
    "column is the tail of single-call samples, since a mean of k calls hides a slow call. Accuracy is "
    "measured on the device, by running the test split through the runtime the latency came from; "
    "each result says where its accuracy was measured. 'invoke' is the runtime's call alone; 'e2e' "
    "adds preprocessing, quantization and postprocessing. Percentiles interpolate linearly "
    "(numpy's default).")


def method_text(rep: Report) -> str:
    """``METHOD`` plus what these results state: interval methods, k, clock steps."""
    methods = "; ".join(f"{m} ({n} result{'s' if n != 1 else ''})" for m, n in ci_methods(rep).items())
    ks = sorted({r.calls_per_sample for r in rep.rows})
    steps = sorted({r.clock_step_ms for r in rep.rows if r.clock_step_ms})
    step_text = ", ".join(f"{sig(s * 1000)} us" for s in steps) if steps else "not measured"
    return (f"{METHOD} Interval: {methods}. Calls per sample (k): {', '.join(map(str, ks))}; "
            f"clock step: {step_text}.")


def budget_heading(rep: Report) -> str:
    zero = "" if rep.zero_rule is None else f" and above the zero-rule baseline ({rep.zero_rule:.2%})"
    return (f"Ship this: per device, among the artifacts within {float(rep.accuracy_budget)} accuracy "
            f"points of the best accuracy measured there{zero}, of those tied with the lowest p50 "
            "(intervals overlap) the smallest file")


TABLE_COLUMNS = ("variant", "artifact", "backend", "threads", "rounds", "p50 ms", "p50 interval (level)",
                 "p90 ms", "p99 ms (1-call)", "mean ± std", "k", "e2e p50", "init ms", "first ms",
                 "RSS MB", "size", "accuracy", "accuracy from", "flag")


def p99_cell(r: Row) -> str:
    value, single = r.p99
    return f"{value:.4f}" + ("" if single else "*")


def cells(r: Row) -> list[str]:
    lat = r.latency
    return [r.variant, r.artifact, f"{r.backend} {r.backend_version}", str(r.threads or "-"), str(r.rounds),
            f"{lat['p50']:.4f}", interval(r.ci, 4, r.ci_level) if r.ci else "-", f"{lat['p90']:.4f}",
            p99_cell(r),
            f"{lat['mean']:.4f} ± {lat['std']:.4f}", str(r.calls_per_sample), num(r.e2e_p50),
            num(r.init_ms, "{:.1f}"), num(r.first_ms, "{:.3f}"), num(r.peak_rss_mb, "{:.0f}"),
            size(r.bytes), pct(r.accuracy), r.accuracy_source or "-", "; ".join(r.flags)]


P99_NOTE = "p99 (1-call): single-call samples; * marks a p99 over k-call means (no single-call tail)."

COMPRESSION_COLUMNS = ("variant", "parent", "passes", "test accuracy", "change", "sparsity", "params",
                       "nonzero", "TFLite bytes", "gzip bytes", "deploy form")


def compression_cells(c: dict[str, Any]) -> list[str]:
    return [c["variant"], c.get("parent") or "-", c.get("passes") or "-",
            pct(c.get("test_accuracy")), delta_pt(c.get("accuracy_delta")), pct(c.get("sparsity")),
            num(c.get("params"), "{:,}"), num(c.get("nonzero_params"), "{:,}"),
            num(c.get("tflite_bytes"), "{:,}"), num(c.get("tflite_gzip_bytes"), "{:,}"),
            str(c.get("deploy_form") or "-")]


FACT_KEYS = ("device_id", "hostname", "cpu_model", "board", "browser", "cores", "usable_cores", "arch", "os",
             "kernel", "python", "governor", "emulated", "backends", "rounds", "runs", "warmup",
             "calls_per_sample", "clock_step_ms", "accuracy_source", "measured")


def environment_facts(env: dict[str, Any]) -> list[tuple[str, str]]:
    pk = env.get("packages") or {}
    return [("edgeship", str(env.get("edgeship_version"))), ("python", str(env.get("python"))),
            ("platform", str(env.get("platform"))), *((str(k), str(v)) for k, v in pk.items())]


def render_markdown(rep: Report) -> str:
    """report.md: the same facts as the HTML without plots."""
    def table(cols: Iterable[str], rows: Iterable[list[str]]) -> list[str]:
        cols = list(cols)
        out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        return out

    lines = [f"# Benchmark report: {rep.run_id}", "", f"## {budget_heading(rep)}", ""]
    lines += [f"- {rec['line']}" for rec in rep.recommendations] + [""]
    lines += [f"- {no_bench_line(rep)}", ""] if not rep.devices else []
    lines += ["## Method", "", method_text(rep), "", "Plots (latency distributions, "
              "size/accuracy/latency): see report.html.", ""] if rep.devices else []
    for d in rep.devices:
        lines += [f"## {d.title}", ""]
        if d.note:
            lines += [f"**{d.note}**", ""]
        lines += [f"- {v}" for v in d.verdicts] + [""]
        lines += [*table(TABLE_COLUMNS, (cells(r) for r in d.rows)), "", P99_NOTE, ""]
    if rep.fleet:
        lines += [f"## {fleet.HEADING}", "", fleet.NOTE, ""]
        lines += [*table(fleet.COLUMNS, (fleet.cells(r) for r in rep.fleet)), ""]
    lines += serving.markdown(rep.serving) + monitoring.markdown(rep.monitoring)
    lines += ["## Compression", ""]
    lines += [*table(COMPRESSION_COLUMNS, (compression_cells(c) for c in rep.compression)), ""]
    lines += ["## Environment", ""]
    for d in rep.devices:
        lines += [f"### {d.title}", ""]
        lines += table(("fact", "value"), ([k, fact(d.facts.get(k))] for k in FACT_KEYS if k in d.facts))
        lines += [""]
    if rep.environment:
        lines += ["### The run (training and export)", ""]
        lines += [*table(("fact", "value"), (list(f) for f in environment_facts(rep.environment))), ""]
    return "\n".join(lines)


CSV_FIELDS = ("device", "device_id", "on", "emulated", "variant", "artifact", "format", "quantize", "backend",
              "backend_version", "threads", "rounds", "runs", "warmup", "calls_per_sample", "clock_step_ms",
              "p50", "p50_ci_lo", "p50_ci_hi", "ci_level", "p90", "p95", "p99", "mean", "std", "min", "max",
              "tail_p99", "tail_max", "e2e_p50", "init_ms", "first_ms", "peak_rss_mb", "bytes", "accuracy",
              "accuracy_source", "top1_agreement", "ci_method", "codes", "flags", "file")


def csv_row(r: Row) -> dict[str, Any]:
    lat, tail = r.latency, r.tail or {}
    return {
        "device": r.device, "device_id": r.device_id, "on": r.on, "emulated": r.emulated,
        "variant": r.variant, "artifact": r.artifact, "format": r.format, "quantize": r.quantize,
        "backend": r.backend, "backend_version": r.backend_version, "threads": r.threads,
        "rounds": r.rounds, "runs": r.runs, "warmup": r.warmup, "calls_per_sample": r.calls_per_sample,
        "clock_step_ms": r.clock_step_ms,
        **{k: lat[k] for k in ("p50", "p90", "p95", "p99", "mean", "std", "min", "max")},
        "p50_ci_lo": r.ci[0] if r.ci else None, "p50_ci_hi": r.ci[1] if r.ci else None,
        "ci_level": r.ci_level,
        "tail_p99": tail.get("p99"), "tail_max": tail.get("max"), "e2e_p50": r.e2e_p50,
        "init_ms": r.init_ms, "first_ms": r.first_ms, "peak_rss_mb": r.peak_rss_mb, "bytes": r.bytes,
        "accuracy": r.accuracy, "accuracy_source": r.accuracy_source, "top1_agreement": r.top1_agreement,
        "ci_method": r.ci_method, "codes": "".join(r.codes), "flags": "; ".join(r.flags), "file": r.file,
    }


def render_csv(rep: Report) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_FIELDS), lineterminator="\n")
    w.writeheader()
    for r in rep.rows:
        w.writerow(csv_row(r))
    return buf.getvalue()


def render_json(rep: Report) -> str:
    """The report as one JSON object; ``recommendations`` comes first."""
    return json.dumps(rep.as_dict(), indent=2)


def no_bench_line(rep: Report) -> str:
    """What a report without benchmark results says where "ship this" would be."""
    return (f"no benchmark results in this run (bench/*.json), so nothing to ship yet: measure with "
            f"`edgeship bench {rep.run_id}`; the serving and monitoring results are below")
