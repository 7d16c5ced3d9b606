"""``edgeship bench``: parse, call one driver through ``benchmarks.harness.bench_run``, print."""

from __future__ import annotations

from typing import Any

import click

from edgeship.cli.options import json_option, pass_app
from edgeship.errors import InputError

EMULATED_NOTE = "emulated (not device latency)"


@click.command()
@click.argument("run_ref", metavar="RUN", default="latest")
@click.option("--variant", "variants", default="all", show_default=True,
              help="Variant name(s), comma-separated, or 'all'.")
@click.option("--format", "formats", default="all", show_default=True,
              help="A format (tflite, onnx, tvm, web), an export folder (tflite-int8), a comma list, or all.")
@click.option("--on", "on", type=click.Choice(["host", "browser", "pi"]), default="host", show_default=True,
              help="Where to measure: this machine, headless Chromium, or a Raspberry Pi over SSH.")
@click.option("--runs", type=int, default=200, show_default=True, help="Timed calls per measurement.")
@click.option("--warmup", type=int, default=20, show_default=True, help="Discarded warm-up calls.")
@click.option("--threads", default="1,2", show_default=True, help="Thread counts, comma-separated.")
@click.option("--host", "ssh_host", metavar="USER@HOST", help="--on pi: the Pi to measure on.")
@click.option("--emulated", is_flag=True,
              help="--on pi: the emulated aarch64 Pi under QEMU (timings labelled emulated).")
@click.option("--port", type=int, help="--on pi: SSH port.")
@click.option("--identity", type=click.Path(dir_okay=False), help="--on pi: SSH private key file.")
@click.option("--accept-new-host-key", is_flag=True,
              help="--on pi: trust the Pi's host key on first contact (ssh accept-new).")
@json_option
@pass_app
def bench(app: Any, run_ref: str, variants: str, formats: str, on: str, runs: int, warmup: int,
          threads: str, ssh_host: str | None, emulated: bool, port: int | None, identity: str | None,
          accept_new_host_key: bool, as_json: bool) -> None:
    """Measure every passing export of RUN; results go to RUN/bench/ in one schema.

    Each measurement times the runtime's invoke alone and end to end (preprocessing and
    postprocessing included), after discarded warm-up calls.

    \b
    Examples:
      edgeship bench latest                          # every export, 1 and 2 threads, on this machine
      edgeship bench latest --format tflite-int8 --threads 1 --runs 500
      edgeship bench latest --on browser
      edgeship bench latest --on pi --host pi@raspberrypi.local
      edgeship bench latest --on pi --emulated
      edgeship bench latest --json > results.json
    """
    from benchmarks.harness import bench_run, check_counts, parse_threads
    from edgeship import console

    check_counts(runs, warmup)
    thread_counts = parse_threads(threads)
    pi_only = {"--host": ssh_host, "--emulated": emulated, "--port": port, "--identity": identity,
               "--accept-new-host-key": accept_new_host_key}
    misplaced = [k for k, v in pi_only.items() if v not in (None, False)]
    if on != "pi" and misplaced:
        raise InputError(f"{misplaced[0]} goes with --on pi, not --on {on}")
    run = app.store.resolve(run_ref)
    options: dict[str, Any] = {"threads": thread_counts, "runs": runs, "warmup": warmup}
    total: int | None = None
    label = on
    if on == "host":
        from benchmarks.host import plan_size

        options.update(variants=variants, formats=formats, log=console.warn)
        total = plan_size(run, variants, formats, thread_counts)
    elif on == "browser":
        options.update(variants=variants, formats=formats, log=console.warn)
    else:
        options.update(host=ssh_host, emulated=emulated, variant=variants, format=formats, port=port,
                       identity=identity, accept_new_host_key=accept_new_host_key, log=console.warn)
        label = "pi emulated" if emulated else f"pi {ssh_host}" if ssh_host else "pi"
    with console.progress(f"bench --on {on}", total=total) as bar:
        results = bench_run(run, on, label=label, progress=bar, **options)
    if as_json:
        console.emit_json({"results": results})
        return
    _table(run, results)


def _table(run: Any, results: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from edgeship import console

    table = Table(title=f"benchmarks of {run.id}: ms per call (invoke alone; e2e with pre/post)")
    right = ("thr", "p50", "p90", "p99", "e2e p50", "init ms", "RSS MB", "KiB", "acc")
    for col in ("on", "variant", "artifact", *right):
        table.add_column(col, justify="right" if col in right else "left", no_wrap=col == "artifact")
    for r in sorted(results, key=lambda r: (r["on"], r["latency_ms"]["p50"])):
        lat, e2e = r["latency_ms"], r.get("end_to_end_ms") or {}
        where = r["on"] + (f" [yellow]{EMULATED_NOTE}[/]" if r["device"].get("emulated") else "")
        table.add_row(
            where, str(r.get("variant")), str(r["artifact"]).rsplit("/", 1)[-1],
            str(r.get("threads") or "-"), f"{lat['p50']:.4f}", f"{lat['p90']:.4f}",
            f"{lat['p99']:.4f}", "-" if not e2e else f"{e2e['p50']:.4f}",
            "-" if r.get("init_ms") is None else f"{r['init_ms']:.1f}",
            "-" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:.0f}",
            "-" if not r.get("bytes") else f"{r['bytes'] / 1024:.1f}",
            "-" if r.get("accuracy") is None else f"{r['accuracy']:.4f}",
        )
    console.out.print(table)
    console.out.print(f"results: {run.path / 'bench'}   report: edgeship report {run.id}")
