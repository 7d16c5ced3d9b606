"""``edgeship deploy pi``: parse, call ``edgeship.devices.deploy.deploy_pi``, print."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from edgeship.benchmarks.harness import BenchSettings
from edgeship.cli.options import PORT, json_option, pass_app
from edgeship.core import console
from edgeship.devices.deploy import deploy_pi, open_device
from edgeship.devices.options import PI_THREADS
from edgeship.devices.serving.service import ServeOptions, serve_deployment

EMULATED_NOTE = "emulated (not device latency)"


@click.group()
def deploy() -> None:
    """Ship exported models to a device and run them there."""


@deploy.command("pi")
@click.argument("run_ref", metavar="RUN", default="latest")
@click.option("--host", metavar="USER@HOST",
              help="The Pi over SSH: USER@HOST or a ~/.ssh/config alias (keys, ProxyJump work).")
@click.option("--emulated", is_flag=True,
              help="The emulated aarch64 Pi on this machine (set up on first use, about 30 s); "
                   "its timings are labelled emulated.")
@click.option("--variant", default="base", show_default=True, help="Variant name(s), comma-separated.")
@click.option("--format", "fmt", default="tflite", show_default=True,
              help="tflite, tvm (a build for the Pi's CPU: --target rpi4/rpi5 at export), onnx, "
                   "an export folder (tflite-int8), or a comma list.")
@click.option("--quantize", help="Only exports with this quantization (comma list): float32, int8, ...")
@click.option("--port", type=PORT, help="SSH port (default: ~/.ssh/config, else 22).")
@click.option("--identity", type=click.Path(dir_okay=False, path_type=Path), help="SSH private key file.")
@click.option("--remote-dir", default="edgeship", show_default=True,
              help="Folder on the device, relative to the login's home or absolute.")
@click.option("--accept-new-host-key", is_flag=True,
              help="Trust the host key on first contact (ssh accept-new); a changed key is always refused.")
@click.option("--offline", is_flag=True,
              help="Install from wheels for the device's CPU and Python (aarch64 cp311 on a Pi), "
                   "downloaded here and shipped in the bundle: no internet needed on the device.")
@click.option("--bench", is_flag=True, help="Measure there and store the results in RUN/bench/.")
@click.option("--rounds", type=click.IntRange(min=1), default=BenchSettings.rounds, show_default=True,
              help="--bench: interleaved rounds.")
@click.option("--runs", type=click.IntRange(min=1), default=BenchSettings.runs, show_default=True,
              help="--bench: timed samples per round.")
@click.option("--warmup", type=click.IntRange(min=0), default=BenchSettings.warmup, show_default=True,
              help="--bench: discarded calls per round.")
@click.option("--threads", default=",".join(map(str, PI_THREADS)), show_default=True,
              help="--bench: thread counts, comma-separated.")
@click.option("--serve", is_flag=True,
              help="Then run the model server there (python -m edge_runtime serve, on 127.0.0.1): a "
                   "systemd user unit on a Pi, a supervised process on the emulated one. A server "
                   "already running takes the new artifacts without dropping a request.")
@click.option("--serve-port", type=PORT, default=8501, show_default=True,
              help="--serve: the server's port on the device (--port is SSH's).")
@click.option("--serve-workers", type=click.IntRange(min=1), default=None,
              help="--serve: interpreters (default: the device's cores, at most 4).")
@click.option("--log-inputs", type=click.Choice(["none", "summary", "raw"]), default="summary",
              show_default=True, help="--serve: what the request log keeps of each input.")
@json_option
@pass_app
def pi(app: Any, run_ref: str, host: str | None, emulated: bool, variant: str, fmt: str,
       quantize: str | None, port: int | None, identity: Path | None, remote_dir: str,
       accept_new_host_key: bool, offline: bool, bench: bool, rounds: int, runs: int, warmup: int,
       threads: str, serve: bool, serve_port: int, serve_workers: int | None, log_inputs: str,
       as_json: bool) -> None:
    """Deploy RUN's exports to a Raspberry Pi: copy, verify (sha256), install, optionally bench.

    Only changed files are sent; the device gets a venv with the runtime (ai-edge-litert or
    the TVM runtime) from PyPI, or with --offline from wheels shipped in the bundle.

    \b
    Examples:
      edgeship deploy pi latest --host pi@raspberrypi.local --bench
      edgeship deploy pi latest --host pi@raspberrypi.local --format tflite --quantize int8 --offline
      edgeship deploy pi latest --host mypi --format tvm --bench      # export --target rpi4 first
      edgeship deploy pi latest --emulated --bench                    # no Pi: aarch64 under QEMU
      edgeship deploy pi latest --emulated --serve                    # then serve on 127.0.0.1:8501
    """
    options = ServeOptions(port=serve_port, workers=serve_workers, log_inputs=log_inputs)
    if serve:
        options.check()  # before any connection
    settings = BenchSettings.parse(threads, rounds=rounds, runs=runs, warmup=warmup)
    run = app.store.resolve(run_ref)
    with console.progress("deploy", total=None) as bar:
        dep = deploy_pi(
            run, host=host, emulated=emulated, variant=variant, format=fmt, quantize=quantize,
            remote_dir=remote_dir, offline=offline, bench=settings if bench else None, progress=bar,
            log=console.info, port=port, identity=identity,
            accept_new_host_key=accept_new_host_key, serve=serve,
        )
    serving = None
    if serve:
        device = open_device(host, emulated=emulated, port=port, identity=identity,
                             accept_new_host_key=accept_new_host_key)
        serving = serve_deployment(device, dep.remote_dir, [a.remote for a in dep.artifacts], options,
                                   log=console.info)
    if as_json:
        console.emit_json({**dep.summary(), **({"serving": serving} if serving else {})})
        return
    _print(dep)
    if serving:
        _print_serving(serving)


def _print_serving(serving: dict[str, Any]) -> None:
    url = serving["url"]
    if serving["action"] == "started":
        names = ", ".join(serving["models"])
        console.out.print(f"serving {names} at {url} ({serving['manager']}); try:  curl -d @digit.json "
                          f"{url}/v1/models/{next(iter(serving['models']))}:predict", markup=False)
        if serving.get("note"):
            console.out.print(serving["note"], markup=False)
    else:
        for name, answer in serving["models"].items():
            console.out.print(f"updated {name} at {url}: version {answer['model_version']} serving, version "
                              f"{answer.get('previous')} kept (edgeship serve rollback)", markup=False)
        if not serving["models"]:
            console.out.print(f"the server at {url} already serves these artifacts", markup=False)


def _print(dep: Any) -> None:
    s = dep.sync
    where = f"{dep.device}:{dep.remote_dir}"
    console.out.print(
        console.escape(
            f"deployed {len(dep.artifacts)} artifact(s) of {dep.run_id} to {where} in "
            f"{sum(dep.seconds.values()):.1f} s: sent {len(s.sent)} file(s) "
            f"({s.bytes_sent / 1024:.1f} KiB), {s.unchanged} unchanged; sha256 verified for "
            f"{dep.verified_files} files; venv {dep.venv}")
        + (" [yellow](emulated)[/]" if dep.emulated else "")
    )
    if dep.results:
        _table(dep)
    else:
        first = dep.artifacts[0].remote
        console.out.print(f"run it there:  cd {shlex.quote(dep.bundle_dir)} && PYTHONDONTWRITEBYTECODE=1 "
                          f"{dep.python} -m edge_runtime bench {shlex.quote(first)}", markup=False)


def _table(dep: Any) -> None:
    title = f"on {dep.device}: ms per call (invoke alone; e2e with pre/post)"
    table = Table(title=console.escape(title + (f" - {EMULATED_NOTE}" if dep.emulated else "")))
    right = ("thr", "p50", "p90", "p99", "e2e p50", "init ms", "RSS MB")
    for col in ("artifact", *right):
        table.add_column(col, justify="right" if col in right else "left", no_wrap=True)
    for r in dep.results:
        lat, e2e = r["latency_ms"], r.get("end_to_end_ms") or {}
        table.add_row(
            console.escape(str(r["artifact"]).removeprefix("exports/")), str(r.get("threads") or "-"),
            f"{lat['p50']:.4f}", f"{lat['p90']:.4f}", f"{lat['p99']:.4f}",
            "-" if not e2e else f"{e2e['p50']:.4f}",
            "-" if r.get("init_ms") is None else f"{r['init_ms']:.1f}",
            "-" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:.0f}",
        )
    console.out.print(table)
    if dep.bench_files:
        console.out.print(f"results: {dep.bench_files[0].parent}   report: edgeship report {dep.run_id}",
                          markup=False)
