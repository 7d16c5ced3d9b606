"""``edgeship bench``: parse, call one driver through ``edgeship.devices.registry.bench_run``, print."""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from edgeship.benchmarks.harness import BenchSettings
from edgeship.cli.options import PORT, json_option, pass_app
from edgeship.core import console
from edgeship.devices.options import OPTIONS, for_device
from edgeship.devices.registry import bench_run, get_driver, plan_size


@click.command()
@click.argument("run_ref", metavar="RUN", default="latest")
@click.option("--variant", "variants", default="all", show_default=True,
              help="Variant name(s), comma-separated, or 'all'.")
@click.option("--format", "formats", default="all", show_default=True,
              help="A format (tflite, onnx, tvm, web), an export folder (tflite-int8), a comma list, or all.")
@click.option("--on", "on", type=click.Choice(list(OPTIONS)), default="host",
              show_default=True,
              help="Where to measure: this machine, headless Chromium, a Raspberry Pi over SSH, or every "
                   "free device of --key at TVM's RPC tracker (`edgeship fleet`).")
@click.option("--rounds", type=click.IntRange(min=1), default=BenchSettings.rounds, show_default=True,
              help="Interleaved rounds: every artifact and thread count once per round.")
@click.option("--runs", type=click.IntRange(min=1), default=BenchSettings.runs, show_default=True,
              help="Timed samples per round.")
@click.option("--warmup", type=click.IntRange(min=0), default=BenchSettings.warmup, show_default=True,
              help="Discarded warm-up calls per round.")
@click.option("--threads", default=",".join(map(str, BenchSettings.threads)), show_default=True,
              help="Thread counts, comma-separated.")
@click.option("--host", metavar="USER@HOST", help="--on pi: the Pi to measure on.")
@click.option("--emulated", is_flag=True,
              help="--on pi: the emulated aarch64 Pi under QEMU (timings labelled emulated).")
@click.option("--port", type=PORT, help="--on pi: SSH port.")
@click.option("--identity", type=click.Path(dir_okay=False), help="--on pi: SSH private key file.")
@click.option("--accept-new-host-key", is_flag=True,
              help="--on pi: trust the Pi's host key on first contact (ssh accept-new).")
@click.option("--key", metavar="KEY", help="--on fleet: the device key (e.g. rpi4).")
@click.option("--split", is_flag=True,
              help="--on fleet: each artifact once, on whichever device is free (default: on every device).")
@click.option("--tracker", metavar="HOST:PORT",
              help="--on fleet: the RPC tracker (default: the one `edgeship fleet tracker start` started).")
@json_option
@pass_app
def bench(app: Any, run_ref: str, variants: str, formats: str, on: str, rounds: int, runs: int, warmup: int,
          threads: str, host: str | None, emulated: bool, port: int | None, identity: str | None,
          accept_new_host_key: bool, key: str | None, split: bool, tracker: str | None,
          as_json: bool) -> None:
    """Measure every passing export of RUN; results go to RUN/bench/ in one schema.

    Every artifact and thread count is measured once per round, in an order that changes each
    round; a result reports the median of its rounds' p50s with an interval whose level is exact for
    the number of rounds (93.75 % for 5, 75 % for 3), the tail from
    single-call samples, and the accuracy measured on the device itself.

    \b
    Examples:
      edgeship bench latest                          # every export, 1 and 2 threads, on this machine
      edgeship bench latest --format tflite-int8 --threads 1 --runs 500
      edgeship bench latest --on browser
      edgeship bench latest --on pi --host pi@raspberrypi.local
      edgeship bench latest --on pi --emulated
      edgeship bench latest --on fleet --key rpi4      # every free rpi4 of the tracker, at once
      edgeship bench latest --json > results.json
    """
    settings = BenchSettings.parse(threads, variants=variants, formats=formats, rounds=rounds, runs=runs,
                                   warmup=warmup)
    options = for_device(on, {"host": host, "emulated": emulated, "port": port, "identity": identity,
                              "accept_new_host_key": accept_new_host_key, "key": key, "tracker": tracker,
                              "split": split})
    run = app.store.resolve(run_ref)
    get_driver(on)  # a missing driver is named before anything is planned
    with console.progress(f"bench --on {on}", total=plan_size(run, on, settings, options)) as bar:
        results = bench_run(run, on, settings, options, progress=bar, log=console.warn)
    if as_json:
        console.emit_json({"results": results})
        return
    _table(run, results)


def _table(run: Any, results: list[dict[str, Any]]) -> None:
    table = Table(title=f"benchmarks of {escape(str(run.id))}: ms per call, "
                        "median of rounds [interval] level")
    right = ("thr", "p50 [interval] level", "p99 tail", "e2e p50", "KiB", "acc")
    for col in ("device", "variant", "artifact", *right):
        table.add_column(col, justify="right" if col in right else "left", no_wrap=True)
    for r in sorted(results, key=lambda r: (r.get("device_id") or r["on"], r["latency_ms"]["p50"])):
        lat, e2e = r["latency_ms"], r.get("end_to_end_ms") or {}
        ci = r.get("p50_ci_ms")
        level = f" {r['ci_level']:.2%}" if r.get("ci_level") else ""
        p50 = f"{lat['p50']:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]{level}" if ci else " [1 round]")
        tail = (r.get("tail_ms") or {}).get("p99", lat["p99"])
        where = escape(str(r.get("device_id") or r["on"]))
        if r["device"].get("emulated"):
            where += " [yellow](emulated)[/]"
        acc = "-" if r.get("accuracy") is None else f"{r['accuracy']:.4f}"
        if r.get("accuracy") is not None and r.get("accuracy_source") != "device":
            acc += "*"
        table.add_row(
            where, escape(str(r.get("variant"))), escape(str(r["artifact"]).rsplit("/", 1)[-1]),
            str(r.get("threads") or "-"), p50, f"{tail:.4f}", "-" if not e2e else f"{e2e['p50']:.4f}",
            "-" if not r.get("bytes") else f"{r['bytes'] / 1024:.1f}", acc,
        )
    console.out.print(table)
    if any(r.get("accuracy") is not None and r.get("accuracy_source") != "device" for r in results):
        console.out.print("* accuracy from the export's host validation, not measured on this device")
    console.out.print(f"results: {run.path / 'bench'}   report: edgeship report {run.id}", markup=False)
