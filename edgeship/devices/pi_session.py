"""Measure on the device: one ``edge_runtime bench`` session over a deployed bundle, evaluated here.

The session is the host's (``edge_runtime.rounds``): interleaved rounds, one fresh process per
artifact and thread count, accuracy measured there on the bundle's test split
(``venv/bin/python -m edge_runtime bench ART... --json --on pi``). Results are then evaluated
against the run (``finish_results``) and, by the caller, stored with
``edgeship.benchmarks.store.save_results``. The emulated Pi's results carry
``device.emulated: true`` and a note: QEMU timings are not Pi latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edge_runtime.result import require_valid
from edgeship.core.console import Progress
from edgeship.core.runstore import RunDir
from edgeship.devices.bundle import Log
from edgeship.devices.deployment import Deployment
from edgeship.devices.errors import DeployError
from edgeship.devices.pi import Device, command_failed, json_lines

BENCH_TIMEOUT_S = 1200.0  # `import tvm` alone takes 20-60 s under QEMU
BENCH_CONFIG_TIMEOUT_S = 120.0  # and each (artifact, threads) per round, emulated
EMULATED_NOTE = ("emulated: aarch64 Debian 12 under QEMU user-mode emulation on another CPU; "
                 "not Raspberry Pi latency")


def bench_deployed(
    device: Device,
    deployment: Deployment,
    *,
    threads: Sequence[int] = (1,),
    runs: int = 200,
    warmup: int = 20,
    rounds: int = 5,
    progress: Progress | None = None,
    log: Log | None = None,
) -> list[dict[str, Any]]:
    """One ``python -m edge_runtime bench`` session on the device over every deployed artifact.

    The same session the host runs (``edge_runtime.rounds``): interleaved rounds, and accuracy
    measured there on the bundle's test split. An artifact the device cannot load is logged and
    left out. Results are schema-valid, not yet stored; ``artifact`` is the run-relative folder.
    """
    say = log or (lambda _m: None)
    env = {"PYTHONDONTWRITEBYTECODE": "1", "EDGESHIP_DEVICE": "pi"}
    if device.emulated:
        env["EDGESHIP_EMULATED"] = "1"
    argv = [deployment.python, "-m", "edge_runtime", "bench", *(a.remote for a in deployment.artifacts),
            "--json", "--on", "pi", "--rounds", str(rounds), "--runs", str(runs), "--warmup", str(warmup),
            "--threads", ",".join(map(str, threads))]
    if deployment.testset:
        argv += ["--test", deployment.testset]
    configs = len(deployment.artifacts) * len(threads)
    done = device.run(argv, cwd=deployment.bundle_dir, env=env, check=False,
                      timeout=BENCH_TIMEOUT_S + BENCH_CONFIG_TIMEOUT_S * configs * rounds)
    for line in done.stderr.splitlines():
        if line.startswith("warning: "):
            say(line.removeprefix("warning: "))
    rows = json_lines(done.stdout)
    if done.returncode != 0 or not rows:
        raise command_failed(argv, done, device.name)
    results = [_label(r, device, deployment) for r in rows]
    if progress is not None:
        progress.update(len(results), f"{len(results)} measurement(s) on {device.name}")
    return [require_valid(r) for r in results]


def _label(row: dict[str, Any], device: Device, deployment: Deployment) -> dict[str, Any]:
    """A device result as the run knows it: its artifact folder, run id and device name."""
    by_remote = {a.remote: a for a in deployment.artifacts}
    row["artifact"] = by_remote[_remote_key(row["artifact"], by_remote)].rel
    row["run_id"] = row.get("run_id") or deployment.run_id
    row["device"] = {**(row.get("device") or {}), "name": device.name}
    if device.emulated:
        row["device"]["emulated"] = True
        row["notes"] = [*row.get("notes", []), EMULATED_NOTE]
    return row


def _remote_key(path: str, known: dict[str, Any]) -> str:
    """The bundle-relative artifact a device result names (the device reports an absolute path)."""
    norm = path.replace("\\", "/").rstrip("/")
    for remote in known:
        if norm == remote or norm.endswith("/" + remote):
            return remote
    raise DeployError(f"the device reported a result for {path}, which was not deployed")


def finish_results(run: RunDir, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Top-1 agreement with the Keras model; the export's accuracy where the device had no test split."""
    from edgeship.benchmarks.accuracy import export_accuracy, finish_evaluation
    from edgeship.export.stage import list_artifacts

    metas = {m["dir"]: m for m in list_artifacts(run, include_failed=False)}
    for r in results:
        if r.get("accuracy") is None:
            r["accuracy"] = export_accuracy(metas.get(r["artifact"], {}))
            r["accuracy_source"] = None if r["accuracy"] is None else "export validation"
        finish_evaluation(run, r)
    return results


def bench_label(device: Device) -> str:
    """The ``bench`` stage label, as ``edgeship bench --on pi`` writes it."""
    return "pi emulated" if device.emulated else f"pi {device.name}"
