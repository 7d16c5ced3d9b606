"""``edgeship monitor``: a device's request logs against the run; exit 3 when a threshold trips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeship.cli.options import COUNT, PORT, POSITIVE, Number, json_option, pass_app
from edgeship.core.console import emit_json, escape, out
from edgeship.core.errors import InputError
from edgeship.devices.deploy import open_device
from edgeship.devices.monitoring.pull import PULLED, device_slug, pull_logs

FRACTION = Number(float, min=0, max=1, min_open=True, max_open=True)


@click.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--from", "source", default=None, type=click.Path(path_type=Path),
              help="A folder of request logs (requests-*.jsonl, feedback-*.jsonl) from a serving device.")
@click.option("--emulated", is_flag=True, help="Pull the logs from the emulated Pi's server first.")
@click.option("--host", metavar="USER@HOST", help="Pull the logs from a Pi's server over SSH first.")
@click.option("--remote-dir", default="edgeship", show_default=True,
              help="With --emulated/--host: the deploy's folder there (logs in DIR/logs).")
@click.option("--port", type=PORT, help="SSH port (with --host).")
@click.option("--identity", type=click.Path(dir_okay=False, path_type=Path), help="SSH private key (--host).")
@click.option("--window", default="200", show_default=True,
              help="Requests per window (200) or a time span (30s, 10m, 2h).")
@click.option("--device-id", default=None,
              help="Names the device in monitor/*.json (default: the device's name, or local).")
@click.option("--slo-ms", type=POSITIVE, default=None, help="Alert when a window's p99 latency exceeds this.")
@click.option("--psi", type=POSITIVE, default=0.2, show_default=True, help="PSI at or above which a feature "
              "or the prediction mix may alert.")
@click.option("--alpha", type=FRACTION, default=0.01, show_default=True,
              help="Significance level per window, split over the features tested (Bonferroni).")
@click.option("--confidence-drop", type=POSITIVE, default=0.10, show_default=True,
              help="Alert when mean confidence falls this far below the test split's.")
@click.option("--clip-increase", type=POSITIVE, default=0.02, show_default=True,
              help="Alert when the int8 clipped fraction rises this far above calibration's.")
@click.option("--accuracy-drop", type=POSITIVE, default=0.10, show_default=True,
              help="Alert when live accuracy (from feedback) falls this far below the test accuracy.")
@click.option("--min-labels", type=COUNT, default=20, show_default=True,
              help="Labelled requests a window needs before live accuracy can alert.")
@click.option("--no-save", is_flag=True, help="Judge only; write nothing into the run.")
@json_option
@pass_app
def monitor(app: Any, run_ref: str, source: Path | None, emulated: bool, host: str | None, remote_dir: str,
            port: int | None, identity: Path | None, window: str, device_id: str | None, slo_ms: float | None,
            psi: float, alpha: float, confidence_drop: float, clip_increase: float, accuracy_drop: float,
            min_labels: int, no_save: bool, as_json: bool) -> None:
    """Compare a device's request logs with the run's train and test splits, window by window.

    \b
    Exit status: 0 no alert, 3 a threshold tripped (for cron or CI), 2 bad input.
    Examples:
      edgeship monitor latest --from ./device-logs
      edgeship monitor latest --from ./device-logs --window 10m --slo-ms 50
      edgeship monitor latest --emulated              # pulls DIR/logs from the emulated Pi first
    """
    from edgeship.devices.monitoring.monitor import ALERT_EXIT, MonitorConfig, Thresholds, monitor_run

    if sum(bool(x) for x in (source, emulated, host)) != 1:
        raise InputError("give one of --from FOLDER, --emulated or --host USER@HOST: where the logs are")
    run = app.store.resolve(run_ref)
    if source is None:
        device = open_device(host, emulated=emulated, port=port, identity=identity)
        pulled = pull_logs(device, remote_dir, run.path / PULLED / device_slug(device.name))
        if not as_json:
            out.print(f"pulled {len(pulled.fetched)} log file(s) from {escape(device.name)} "
                      f"({pulled.unchanged} unchanged) into {escape(str(pulled.folder))}")
        source = pulled.folder
        device_id = device_id or device.name
    device_id = device_id or "local"
    thresholds = Thresholds(psi=psi, alpha=alpha, confidence_drop=confidence_drop,
                            clip_increase=clip_increase, accuracy_drop=accuracy_drop,
                            min_labels=min_labels, slo_ms=slo_ms)
    result = monitor_run(run, source, MonitorConfig(window=window, thresholds=thresholds,
                                                    device_id=device_id, save=not no_save))
    if as_json:
        emit_json({"alert": result.alert, "verdict": result.verdict,
                   "files": [str(p) for p in result.paths], "results": result.results})
    else:
        for r in result.results:
            log = r["log"]
            name = escape(f"{r['model'].get('name', '?')} {r['model']['key'][:12]}")
            out.print(f"[bold]{escape(r['device_id'])}[/] model {name}: {len(r['windows'])} window(s), "
                      f"{log['lines']} requests, {log['corrupt_lines']} corrupt line(s) skipped, "
                      f"{log['feedback']} feedback label(s)")
        for line in result.verdict:
            out.print(("[red]ALERT[/] " if line in result.alerts else "") + escape(line))
        for p in result.paths:
            out.print(f"saved {escape(str(p))}")
    if result.alert:
        click.get_current_context().exit(ALERT_EXIT)
