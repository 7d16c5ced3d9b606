"""``edgeship load``: an open-loop sweep of request rates against a serving device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgeship.cli.options import PORT, json_option, pass_app
from edgeship.core.errors import InputError
from edgeship.devices.deploy import open_device
from edgeship.devices.serving.service import DeviceServer, ServeError, device_status, http_call


@click.command("load")
@click.argument("run_ref", metavar="RUN")
@click.option("--url", default=None,
              help="The device's predict URL, http://HOST:PORT/v1/models/<name>:predict. "
                   "Without it, a server is started on this machine (127.0.0.1) for --artifact.")
@click.option("--rates", default="50,100,200", show_default=True,
              help="Request rates per second, comma-separated (Poisson arrivals).")
@click.option("--duration", default="5s", show_default=True,
              help="Time per rate (e.g. 5s, 500ms; at most 120s).")
@click.option("--slo-ms", type=float, default=50.0, show_default=True,
              help="The p99 latency target; the knee is the highest rate under it with < 1 % errors.")
@click.option("--artifact", default="base/tflite-float32", show_default=True,
              help="Without --url: the export to serve here, VARIANT/FOLDER under exports/.")
@click.option("--workers", type=int, default=None, help="Without --url: server interpreters.")
@click.option("--threads", type=int, default=None, help="Without --url: runtime threads per interpreter.")
@click.option("--connections", type=int, default=64, show_default=True,
              help="Keep-alive connections the generator may open.")
@click.option("--body", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help='A JSON body {"instances": [...]} to send instead of the run\'s test inputs.')
@click.option("--replay", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Instead of a sweep: send this stream to --url one input per request, in order "
                   "(a .npz with x[, y] like RUN/data/test_raw.npz, or JSON lines {instance, label}).")
@click.option("--replay-rate", type=float, default=None,
              help="--replay: requests per second (default: each as soon as the last is answered).")
@click.option("--feedback", is_flag=True, help="--replay: post each true label back (:feedback).")
@json_option
@pass_app
def load(app: Any, run_ref: str, url: str | None, rates: str, duration: str, slo_ms: float, artifact: str,
         workers: int | None, threads: int | None, connections: int, body: Path | None, replay: Path | None,
         replay_rate: float | None, feedback: bool, as_json: bool) -> None:
    """Measure throughput and latency under load; writes serve/*.json into the run.

    \b
    Example:
      edgeship load latest --rates 50,100,200 --duration 5s --slo-ms 50
      edgeship load latest --url http://127.0.0.1:8501/v1/models/base:predict
    """
    from edgeship.devices.serving.load import parse_duration, parse_rates
    from edgeship.devices.serving.results import LoadConfig, load_run

    run = app.store.resolve(run_ref)
    if replay is not None:
        _replay(run, url, replay, replay_rate, feedback, as_json)
        return
    config = LoadConfig(rates=parse_rates(rates), duration_s=parse_duration(duration), slo_ms=slo_ms,
                        url=url, artifact=artifact, workers=workers, threads=threads,
                        connections=connections, body=body)
    say = (lambda m: click.echo(m, err=True)) if as_json else click.echo
    doc, path = load_run(run, config, log=say)
    if as_json:
        click.echo(json.dumps({**doc, "file": str(path)}))
        return
    k = doc["knee"]
    lay = doc.get("layout") or {}
    click.echo(f"device {doc['device_id']}, workers {lay.get('workers')} x threads {lay.get('threads')}")
    click.echo(f"knee: {k['rate']:g}/s (p99 {k['p99_ms']:.2f} ms, {k['achieved_rps']:.1f} answered/s)" if k
               else f"knee: none of the rates kept p99 under {slo_ms:g} ms with < 1 % errors")
    for note in doc["notes"]:
        click.echo(f"note: {note}")
    click.echo(f"wrote {path}")


def _replay(run: Any, url: str | None, stream: Path, rate: float | None, feedback: bool,
            as_json: bool) -> None:
    from edgeship.devices.serving.replay import read_stream, replay

    if not url:
        raise InputError("--replay needs --url http://127.0.0.1:PORT/v1/models/<name>:predict (a server)")
    labels = None
    for art in sorted(run.path.glob("exports/*/*/artifact.json")):
        labels = json.loads(art.read_text(encoding="utf-8")).get("labels") or None
        if labels:
            break
    instances, truth = read_stream(stream, labels)
    say = (lambda m: click.echo(m, err=True)) if as_json else click.echo
    r = replay(url, instances, truth, rate=rate, feedback=feedback, log=say)
    doc = {"sent": r.sent, "ok": r.ok, "statuses": r.statuses, "feedback": r.feedback,
           "seconds": round(r.seconds, 3), "versions": r.versions}
    if as_json:
        click.echo(json.dumps(doc))
        return
    fb = f", {r.feedback} feedback label(s)" if feedback else ""
    click.echo(f"replayed {r.sent} input(s) from {stream} in {r.seconds:.1f} s: {r.ok} answered, statuses "
               f"{r.statuses}, versions {r.versions}{fb}")


@click.group("serve")
def serve() -> None:
    """A serving device (python -m edge_runtime serve): status, rollback, stop."""


def _device_options(fn: Any) -> Any:
    """--emulated / --host (with --remote-dir and the SSH options): the device deploy --serve used."""
    for option in reversed([
        click.option("--emulated", is_flag=True, help="The emulated Pi's server."),
        click.option("--host", metavar="USER@HOST", help="A Pi's server, over SSH (deploy --host --serve)."),
        click.option("--remote-dir", default="edgeship", show_default=True, help="The deploy's folder."),
        click.option("--port", type=PORT, help="SSH port (with --host)."),
        click.option("--identity", type=click.Path(dir_okay=False, path_type=Path), help="SSH private key."),
    ]):
        fn = option(fn)
    return fn


def _device_server(emulated: bool, host: str | None, remote_dir: str, port: int | None,
                   identity: Path | None) -> Any:
    return DeviceServer(open_device(host, emulated=emulated, port=port, identity=identity), remote_dir)


def _one_target(url: str | None, emulated: bool, host: str | None) -> None:
    if sum(bool(x) for x in (url, emulated, host)) > 1:
        raise InputError("give one of --url, --emulated or --host")


@serve.command("status")
@click.option("--url", default=None, help="The server's address (default http://127.0.0.1:8501).")
@_device_options
@json_option
def status(url: str | None, emulated: bool, host: str | None, remote_dir: str, port: int | None,
           identity: Path | None, as_json: bool) -> None:
    """Health, models and versions, uptime, and the last minute's request rate and p99."""
    from edgeship.devices.serving.status import server_status

    _one_target(url, emulated, host)
    if emulated or host:
        s = device_status(_device_server(emulated, host, remote_dir, port, identity))
    else:
        s = server_status(url or "http://127.0.0.1:8501")
    if as_json:
        click.echo(json.dumps(s))
        return
    recent = s.get("recent") or {}
    p99 = recent.get("p99_ms")
    click.echo(f"{s['url']}: {'healthy' if s['healthy'] else 'UNHEALTHY'}, "
               f"{'ready' if s['ready'] else 'NOT READY'}, up {s.get('uptime_s') or 0:.0f} s, "
               f"device {s.get('device_id')}")
    lay = s.get("layout") or {}
    click.echo(f"  workers {lay.get('workers')} x threads {lay.get('threads')}, queue {lay.get('max_queue')}")
    click.echo(f"  last {recent.get('window_s', 60):.0f} s: {recent.get('rate_per_s', 0):.1f} requests/s, "
               f"{recent.get('errors', 0)} errors, p99 {'-' if p99 is None else f'{p99:.2f} ms'}")
    for m in s["models"]:
        for v in m.get("model_version_status", []):
            click.echo(f"  {m['name']} v{v['version']} {v['state']}: {v.get('format')} {v.get('quantize')} "
                       f"sha256 {str(v.get('sha256'))[:12]}")


@serve.command("rollback")
@click.option("--model", "name", default="base", show_default=True, help="The served model's name.")
@click.option("--url", default=None, help="A server on this machine, http://127.0.0.1:PORT.")
@_device_options
@json_option
def rollback(name: str, url: str | None, emulated: bool, host: str | None, remote_dir: str,
             port: int | None, identity: Path | None, as_json: bool) -> None:
    """Serve the previous version again (kept loaded beside the current one; no request dropped)."""
    _one_target(url, emulated, host)
    if emulated or host:
        out = _device_server(emulated, host, remote_dir, port, identity).rollback(name)
    elif url:
        code, out = http_call("POST", url.rstrip("/") + f"/v1/models/{name}:rollback", {})
        if code != 200:
            raise ServeError(f"rollback of {name!r} at {url} refused: "
                             f"{out.get('error') if isinstance(out, dict) else out or code}")
    else:
        raise InputError("give --emulated, --host USER@HOST or --url http://127.0.0.1:PORT")
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(f"{name}: version {out['model_version']} serving again (version {out.get('previous')} kept)")


@serve.command("stop")
@_device_options
@json_option
def stop(emulated: bool, host: str | None, remote_dir: str, port: int | None, identity: Path | None,
         as_json: bool) -> None:
    """Stop the device's server (the supervised process, or the systemd user unit)."""
    server = _device_server(emulated, host, remote_dir, port, identity)
    ran = server.stop()
    if as_json:
        click.echo(json.dumps({"stopped": ran, "device": server.device.name}))
        return
    click.echo(f"stopped the server on {server.device.name}" if ran
               else f"no server was running on {server.device.name}")
