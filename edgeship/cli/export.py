"""``edgeship export``: parse, call ``export.stage.export_run``, print.

Exit codes: 0 all artifacts validated; 1 some failed validation (they are kept aside under
``<fmt>.failed/`` and listed); 2 bad input (one line on stderr, nothing written).
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from edgeship.cli.options import DURATION, Number, json_option
from edgeship.core import console
from edgeship.core.errors import InputError
from edgeship.devices.fleet.state import parse_addr
from edgeship.devices.fleet.tracker import free_devices
from edgeship.export.tvm.targets import check_target_text


@click.command("export")
@click.argument("run")
@click.option("--variant", "variants", default="base", show_default=True,
              help="Variant name(s), comma-separated, or 'all'. 'base' is the trained model.")
@click.option("--format", "formats", default="all", show_default=True,
              help="tflite, onnx, tvm, a comma list, or all.")
@click.option("--quantize", default=None,
              help="float32, float16, dynamic, int8 (comma list). Default per format: "
                   "tflite float32,int8; onnx float32; tvm float32. QAT variants get int8 only.")
@click.option("--io", default="int8", show_default=True,
              help="TFLite int8 only: int8 or float32 model input/output.")
@click.option("--target", "targets", default="host", show_default=True,
              help="TVM only: host, rpi4, rpi5 or a JSON target (comma list of names).")
@click.option("--trials", type=Number(int, min=0), default=None, help="TVM only: MetaSchedule tuning trials.")
@click.option("--time-budget", type=DURATION, default=None,
              help="TVM only: tuning time budget (90s, 10m, 1h).")
@click.option("--qat-float", is_flag=True,
              help="Also export float32 of QAT variants (keeps the fake-quant ops: several times slower).")
@click.option("--strict-int8", is_flag=True,
              help="Refuse an int8 TFLite that fails validation instead of keeping its first and "
                   "worst layers in float.")
@click.option("--web-runtime", type=click.Choice(["both", "ort", "litert"]), default="both",
              show_default=True,
              help="web only: browser runtimes the bundle carries (onnxruntime-web, LiteRT.js).")
@click.option("--tracker", "tracker", metavar="HOST:PORT", default=None,
              help="TVM for a Pi: tune with --trials on the devices of --key at this RPC tracker.")
@click.option("--key", "tracker_key", metavar="KEY", default=None,
              help="With --tracker: the device key to tune on (e.g. rpi4; see `edgeship fleet`).")
@json_option
@click.pass_context
def export(ctx: click.Context, run: str, variants: str, formats: str, quantize: str | None, io: str,
           targets: str, trials: int | None, time_budget: float | None, qat_float: bool, strict_int8: bool,
           web_runtime: str, tracker: str | None, tracker_key: str | None, as_json: bool) -> None:
    """Export a run's models to TFLite, ONNX and TVM, each validated against its Keras model.

    QAT variants export to int8 only: float32 keeps their fake-quant ops and runs several
    times slower; --qat-float builds it anyway, with a warning.

    \b
    Example:
      edgeship export latest --format tflite --quantize float32,int8
      edgeship export latest --variant all --format all --json
      edgeship export latest --format tvm --target rpi4 --trials 64 --tracker 127.0.0.1:9190 --key rpi4
    """
    from edgeship.export.stage import ExportConfig, export_run

    tune_on = _tune_on(tracker, tracker_key, trials)
    run_dir = ctx.obj.store.resolve(run)
    cfg = ExportConfig(variants=variants, formats=formats, quantize=quantize, io=io,
                       targets=_targets(targets), trials=trials, time_budget_s=time_budget,
                       qat_float=qat_float, web_runtime=web_runtime, tune_on=tune_on,
                       int8_fallback=not strict_int8)
    results = export_run(run_dir, cfg, log=console.info)
    if as_json:
        console.emit_json({"artifacts": [r.summary() for r in results]})
    else:
        _table(results, run_dir.path)
    failed = [r for r in results if not r.passed]
    if failed:
        console.err.print(f"[red]{len(failed)} export(s) failed validation[/] and were kept aside: "
                          + console.escape(", ".join(str(r.dir) for r in failed)))
        ctx.exit(1)


def _tune_on(tracker: str | None, key: str | None, trials: int | None) -> dict[str, str] | None:
    """``--tracker``/``--key`` checked together, and the key's devices there before any build."""
    if not tracker and not key:
        return None
    if not (tracker and key):
        raise InputError("--tracker and --key go together: the tracker and the device key to tune on")
    if not trials:
        raise InputError("--tracker tunes on devices: give --trials N (e.g. --trials 64)")

    free_devices(*parse_addr(tracker), key)  # none free: one line naming `edgeship fleet join`
    return {"tracker": tracker, "key": key}


def _targets(value: str) -> list[str]:
    # A JSON target holds commas itself: keep it whole.

    value = value.strip()
    names = [value] if value.startswith("{") else [t for t in value.split(",") if t.strip()]
    for name in names:
        check_target_text(name)
    return names


def _table(results: list, run_path: Path) -> None:
    table = Table(title=f"exports in {console.escape(str(run_path / 'exports'))}", show_lines=False)
    numeric = {"size", "top-1", "accuracy", "Δ pt", "max |diff|"}
    for col in ("variant", "artifact", "io", "target", "size", "top-1", "accuracy", "Δ pt",
                "max |diff|", "status"):
        table.add_column(col, justify="right" if col in numeric else "left")
    for r in results:
        v = r.validation
        acc = "-" if v.get("accuracy") is None else f"{v['accuracy']:.4f}"
        drop = "-" if v.get("accuracy_drop") is None else f"{(0.0 - v['accuracy_drop']) * 100:+.2f}"
        status = "[green]ok[/]" if r.passed else "[red]FAILED[/]"
        if r.passed and v.get("warnings"):
            status = "[yellow]ok, warn[/]"
        table.add_row(
            *(console.escape(str(v)) for v in (r.variant, r.dir.name, r.io or "", r.target.get("name", ""))),
            f"{r.bytes / 1024:.1f} KiB",
            "-" if v.get("top1_agreement") is None else f"{v['top1_agreement']:.4f}",
            acc, drop, "-" if v.get("max_abs_diff") is None else f"{v['max_abs_diff']:.1e}", status,
        )
    console.out.print(table)
