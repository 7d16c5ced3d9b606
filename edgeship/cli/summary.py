"""A person's view of a manifest: what `edgeship show` prints.

Everything taken from the manifest (names, paths, column names and reasons) is escaped before
rich reads it as markup: see edgeship.core.console.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeship.core.runstore import RunDir


def render_summary(run: RunDir, m: dict[str, Any], console: Console) -> None:
    env = m.get("environment", {})
    git = env.get("git") or {}
    console.print(f"[bold]run {_e(m['run_id'])}[/]  created {_e(m.get('created'))}  ({_e(run.path)})")
    commit = f"{git.get('sha', '')[:10]}{' (dirty)' if git.get('dirty') else ''}" if git else "-"
    console.print(_e(f"edgeship {env.get('edgeship_version')}, commit {commit}, "
                     f"Python {env.get('python')}, seed {m.get('seed')}"))
    pk = env.get("packages", {})
    console.print(_e("packages: " + ", ".join(f"{k} {v}" for k, v in pk.items())))
    data = m.get("data")
    if data:
        split = data["split"]
        console.print(
            "\n[bold]data[/] " + _e(
                f"{data['dataset']} ({data['kind']}, {data['rows']} rows, "
                f"sha256 {data['sha256'][:12]}…), {len(data['labels'])} classes, input "
                f"{data['input']['shape']} {data['input']['dtype']}")
        )
        console.print(_e(f"split {split['method']}: {split['sizes']}"
                         + (f"  dropped rows: {data['dropped_rows']}" if data["dropped_rows"] else "")))
        dropped = data["preprocessing"].get("dropped") or []
        if dropped:
            console.print(_e("dropped columns: " + ", ".join(
                f"{d['name']} ({d['reason']})" for d in dropped)))
    model = m.get("model")
    if model:
        console.print(f"[bold]model[/] {_e(model['name'])}, {model['params']:,} parameters")
    variants = m.get("variants") or {}
    if variants:
        t = Table(title="variants")
        for col in ("name", "parent", "passes", "test accuracy", "tflite bytes"):
            t.add_column(col)
        for name, v in variants.items():
            acc = v.get("test_accuracy")
            t.add_row(_e(name), _e(v.get("parent", "")), _e(" + ".join(v.get("passes", []))),
                      f"{acc:.4f}" if acc is not None else "-", str(v.get("tflite_bytes", "-")))
        console.print(t)
    exports = m.get("exports") or {}
    stale = _stale_exports(run)
    if exports:
        t = Table(title="exports")
        for col in ("artifact", "format", "quantize", "target", "bytes", "top-1 agreement", "validation"):
            t.add_column(col, justify="right" if col in ("bytes", "top-1 agreement") else "left")
        for key, a in exports.items():
            val = a.get("validation") or {}
            agree = val.get("top1_agreement")
            target = a.get("target") or {}
            t.add_row(_e(key), _e(a.get("format", "")), _e(a.get("quantize", "")),
                      _e(target.get("name", "") if isinstance(target, dict) else target),
                      f"{a.get('bytes', 0):,}", f"{agree:.4f}" if agree is not None else "-",
                      "[red]stale[/]" if key in stale else
                      "passed" if val.get("passed") else "[red]failed[/]")
        console.print(t)
    for key, reason in stale.items():
        console.print(f"[red]stale:[/] {_e(reason)}; re-export it: "
                      f"`edgeship export {_e(m['run_id'])} --variant {_e(key.split('/')[1])}`")
    t = Table(title="stages")
    for col in ("stage", "started", "wall time", "outputs", "key metrics"):
        t.add_column(col)
    for s in m.get("stages", []):
        metrics = s.get("metrics", {})
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()
                          if isinstance(v, int | float))
        t.add_row(_e(s["name"]), _e(s["started"]), f"{s['wall_time_s']:.1f} s", str(len(s["outputs"])),
                  _e(shown))
    console.print(t)


def _stale_exports(run: RunDir) -> dict[str, str]:
    """Export folder -> why it no longer matches its variant's model (``compress --force``)."""
    from edgeship.export.listing import list_artifacts

    return {a["dir"]: a["stale"] for a in list_artifacts(run) if a.get("stale")}


def _e(value: Any) -> str:
    """Manifest text as rich shows it verbatim."""
    return escape(str(value))


def _fmt(v: float) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
