"""Deploy exported models to a Raspberry Pi (or the emulated one): the steps, in order.

One code path for both kinds of device (``edgeship.devices.pi.Device``: ``SshTarget`` or
``EmulatedPi``); each step lives in its own module:

1. probe (``probe``): one ``python3`` call on the device reports its CPU, Python, venv support,
   free space and the remote folder's state (created and marked on first use; a foreign
   non-empty folder is refused, so a typo in ``--remote-dir`` never deletes anyone's files);
2. pack (``bundle``): a local bundle -- the artifact folders, the ``edge_runtime`` sources, a
   ``requirements.txt`` for the formats (``edge_runtime/requirements-<format>.txt``) and,
   offline, the wheels for the device's CPU and Python (``wheels``). Identical inputs give
   byte-identical files, so a re-deploy sends only what changed;
3. sync: ``device.sync(bundle, DIR/bundle-XXXX)``, a new folder beside the bundle in use and
   seeded from it (``install.prepare_bundle``), so only changes travel (rsync --checksum, or
   sha256 manifests + tar; each transfer with a deadline from its size);
4. verify (``install``): the sha256 of every bundle file, computed on the device, against ours
   (offline wheels included, which were checked against their download-time sha256 first);
5. install (``install``): the venv in use is reused while its stamp says it holds the
   requirements; otherwise a new one is built beside it (offline: ``pip --require-hashes``)
   and must import the runtime;
6. check and switch (``install``): the new bundle with its venv loads every artifact and answers
   the golden inputs as recorded; only then does ``DIR/bundle`` switch to it (one rename) and
   the old pair go. A failure before that leaves the old bundle and the old venv running together;
7. bench (``bench``, optional): ``venv/bin/python -m edge_runtime bench ART... --json --on pi``,
   results stored with ``edgeship.benchmarks.store.save_results``.

Remote layout (``DIR`` defaults to ``~/edgeship``)::

    DIR/.edgeship-deploy    marker: edgeship manages this folder
    DIR/bundle -> bundle-XXXX/      what the last deploy sent (a link, switched by one rename)
    DIR/bundle-XXXX/venv -> ../venv-YYYY/   the runtime that bundle was checked with
    DIR/venv -> bundle/venv         so ``../venv/bin/python`` in the bundle is its pair's;
                                    venv/edgeship-venv.json marks it complete

A TVM artifact is a shared library: running it runs native code with the login's rights on the
device. The deploy says so (``Deployment.notes``, and on the log) whenever it ships one.

Every remote argument is a separate, quoted word (``SshTarget.run``); the remote folder may
hold spaces or shell metacharacters.
"""

from __future__ import annotations

import contextlib
import posixpath
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeship.benchmarks.harness import BenchSettings
from edgeship.benchmarks.store import save_results
from edgeship.core.console import Progress
from edgeship.core.errors import InputError
from edgeship.core.fsutil import read_json
from edgeship.core.runstore import RunDir
from edgeship.devices import wheels
from edgeship.devices.bundle import (
    BUNDLE_INFO,
    PI_FORMATS,
    DeployedArtifact,
    Log,
    for_device,
    pack_bundle,
    requirements_for,
    select_artifacts,
)
from edgeship.devices.cache import cache_dir
from edgeship.devices.deployment import Deployment
from edgeship.devices.errors import DeployError, DevicePythonError, NoSpaceError, PipInstallError, VerifyError
from edgeship.devices.install import (
    build_venv,
    check_golden,
    check_space,
    discard,
    no_space,
    pair,
    prepare_bundle,
    switch_pair,
    venv_reusable,
    verify,
)
from edgeship.devices.pi import Device, SyncResult, local_manifest, remote_path
from edgeship.devices.pi.emulator import EmulatedPi
from edgeship.devices.pi.ssh import SshTarget
from edgeship.devices.pi_session import bench_deployed, bench_label, finish_results
from edgeship.devices.probe import DEFAULT_REMOTE_DIR, DeviceInfo, probe

# The names callers outside this package use (the CLI, the pipeline, `edgeship pi emulator setup`).
__all__ = [
    "DEFAULT_REMOTE_DIR", "PI_FORMATS", "DeployError", "Deployment", "DeviceInfo", "DevicePythonError",
    "NoSpaceError", "PipInstallError", "VerifyError", "deploy", "deploy_pi",
    "native_code_notes", "open_device", "requirements_for",
]


class _Steps:
    """Times each step and reports it to the progress bar."""

    def __init__(self, progress: Progress | None):
        self.progress = progress
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, status: str) -> Iterator[None]:
        t0 = time.monotonic()
        yield
        self.seconds[name] = round(time.monotonic() - t0, 2)
        if self.progress is not None:
            self.progress.update(1, f"{status}: {self.seconds[name]:.1f} s")


@dataclass
class _Sent:
    """What the pack, sync and verify steps left on the device."""

    artifacts: list[DeployedArtifact]
    testset: str | None
    sync: SyncResult
    verified: int


def deploy(
    run: RunDir,
    device: Device,
    *,
    variants: str | Sequence[str] = "base",
    formats: str | Sequence[str] = "tflite",
    quantize: str | Sequence[str] | None = None,
    remote_dir: str = DEFAULT_REMOTE_DIR,
    offline: bool = False,
    progress: Progress | None = None,
    log: Log | None = None,
    serve: bool = False,
) -> Deployment:
    """Probe, pack, sync, verify and install (see the module docstring); records a ``deploy`` stage.

    ``serve``: the venv also gets the server's requirements (``requirements-serve.txt``).

    The emulated Pi always installs from shipped wheels (``offline``): pip under QEMU is slow
    enough without the network.
    """
    say = log or (lambda _m: None)
    step = _Steps(progress)
    rdir = remote_path(remote_dir)
    chosen = select_artifacts(run, variants, formats, quantize, log=say)  # fails before any connection
    stale = next((a for a in chosen if a.meta.get("stale")), None)
    if stale is not None:  # made from a model the variant no longer has (compress --force replaced it)
        raise DeployError(f"not deploying stale exports: {stale.meta['stale']}; re-export it with "
                          f"`edgeship export {run.id} --variant {stale.variant}`")
    offline = offline or device.emulated
    params = {"device": device.name, "emulated": device.emulated, "remote_dir": rdir,
              "offline": offline, "selected": [a.rel for a in chosen]}
    with run.stage("deploy", params) as stage:
        with step("probe", f"connecting to {device.name}"):
            info = probe(device, rdir)
        chosen = for_device(chosen, info, device.name, run.id, log=say)
        notes = native_code_notes(chosen, device.name)
        for note in notes:
            say(note)
        requirements = requirements_for([a.format for a in chosen] + (["serve"] if serve else []))
        wheel_dir = None
        if offline:
            with step("wheels", f"{info.machine} cp{info.python_minor.replace('.', '')} wheels"):
                wheel_dir = wheels.download_wheels(requirements, arch=info.machine, python=info.python_minor)
        reuse = venv_reusable(info, requirements)
        with step("prepare", "a new bundle beside the one in use"), no_space(device.name, rdir):
            new_bundle, in_use = prepare_bundle(device, rdir)
        reuse = reuse and in_use is not None
        new_venv = None
        try:
            sent = _send(run, device, rdir, new_bundle, chosen, info, requirements, wheel_dir, reuse=reuse,
                         step=step, say=say)
            with step("install", "reusing the venv" if reuse else "installing the runtime"):
                if not reuse:
                    with no_space(device.name, rdir):
                        new_venv = build_venv(device, rdir, requirements, python=info.python,
                                              offline=offline, machine=info.machine, bundle=new_bundle)
            venv = "reused" if reuse else "installed"
            say(f"venv {venv}: {' '.join(requirements)}")
            changed = new_venv is not None or sent.sync.sent or sent.sync.deleted
            if changed:
                with step("check", "the new bundle answers its golden inputs"):
                    pair(device, rdir, new_bundle, new_venv or str(in_use))
                    check_golden(device, rdir, new_bundle)
                    switch_pair(device, rdir, new_bundle)
                say(f"switched to {new_bundle} with {new_venv or in_use}; the previous pair is removed")
            else:  # the same files and venv: the pair in use stays, checked when it was switched to
                discard(device, rdir, new_bundle)
        except BaseException:
            discard(device, rdir, new_bundle, *([new_venv] if new_venv else []))
            raise
        stage.metrics = _metrics(sent, venv, info, step.seconds)
    return Deployment(
        run_id=run.id, device=device.name, emulated=device.emulated, remote_dir=rdir,
        artifacts=sent.artifacts, requirements=requirements, offline=offline, sync=sent.sync,
        verified_files=sent.verified, venv=venv, device_info=info, seconds=step.seconds,
        testset=sent.testset, notes=notes, switch="switched" if changed else "unchanged",
    )


def native_code_notes(artifacts: Sequence[Any], device_name: str) -> list[str]:
    """One line per TVM artifact: it is native code, to be run only from a source you trust."""
    return [
        f"note: {a.rel} is a TVM shared library, native code that runs with the login's rights "
        f"on {device_name}: deploy it only if you built it or trust where it came from "
        "(its sha256 catches damage, not tampering)"
        for a in artifacts if a.format == "tvm"
    ]


def _send(
    run: RunDir, device: Device, rdir: str, new_bundle: str, chosen: Sequence[Any], info: DeviceInfo,
    requirements: Sequence[str], wheel_dir: Path | None, *, reuse: bool, step: _Steps, say: Log,
) -> _Sent:
    """Pack the bundle in the Pi cache, check the device has room, sync it into ``DIR/new_bundle``
    (seeded from the bundle in use), verify it there."""
    bundles = cache_dir() / "bundles"
    bundles.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bundle-", dir=bundles) as tmp:
        with step("pack", "packing the bundle"):
            bundle = Path(tmp) / "bundle"
            shipped = pack_bundle(run, chosen, bundle, requirements=requirements, wheels=wheel_dir)
            testset = read_json(bundle / BUNDLE_INFO).get("testset")
            local = local_manifest(bundle)
        check_space(device.name, rdir, info, bundle, requirements, wheel_dir, install=not reuse)
        bundle_dir = posixpath.join(rdir, new_bundle)
        with step("sync", f"sending to {device.name}"), no_space(device.name, rdir):
            sync = device.sync(bundle, bundle_dir, delete=True)
        say(f"sent {len(sync.sent)} file(s) ({sync.bytes_sent / 1024:.1f} KiB) by {sync.method}, "
            f"{sync.unchanged} unchanged, {len(sync.deleted)} deleted")
        with step("verify", "checking sha256 on the device"):
            verified = verify(device, bundle_dir, local)
    return _Sent(artifacts=shipped, testset=testset, sync=sync, verified=verified)


def _metrics(sent: _Sent, venv: str, info: DeviceInfo, seconds: dict[str, float]) -> dict[str, Any]:
    """The ``deploy`` stage's metrics."""
    return {
        "artifacts": [a.rel for a in sent.artifacts], "files_sent": len(sent.sync.sent),
        "bytes_sent": sent.sync.bytes_sent, "files_unchanged": sent.sync.unchanged,
        "files_deleted": len(sent.sync.deleted), "verified_files": sent.verified, "venv": venv,
        "device": {"machine": info.machine, "python": info.python, "board": info.board},
        "seconds": seconds,
    }


def open_device(
    host: str | None = None,
    *,
    emulated: bool = False,
    port: int | None = None,
    identity: str | Path | None = None,
    accept_new_host_key: bool = False,
    setup_progress: Callable[[str, int | None], contextlib.AbstractContextManager[Progress]] | None = None,
    **ssh_options: Any,
) -> Device:
    """``SshTarget`` for ``host``, or the ``EmulatedPi``; ``ssh_options`` go to ``SshTarget``.

    The emulated Pi is set up on first use (about 30 s), shown on ``setup_progress`` (default:
    a bar on stderr), so no separate ``edgeship pi emulator setup`` is needed.
    """
    given = {"--port": port, "--identity": identity,
             "--accept-new-host-key": accept_new_host_key or None}
    if emulated:
        if host:
            raise InputError("--emulated runs on this machine: drop --host (or drop --emulated)")
        extra = [k for k, v in given.items() if v is not None]
        extra += [k for k, v in ssh_options.items() if v is not None]
        if extra:
            raise InputError(f"{extra[0]} goes with --host, not --emulated")

        return EmulatedPi(progress=setup_progress)
    if not host:
        raise InputError("give --host USER@HOST (a Pi over SSH) or --emulated (the emulated Pi)")

    return SshTarget(host, port=port, identity=Path(identity).expanduser() if identity else None,
                     accept_new_host_key=accept_new_host_key,
                     **{k: v for k, v in ssh_options.items() if v is not None})


def deploy_pi(
    run: RunDir,
    *,
    host: str | None = None,
    emulated: bool = False,
    variant: str | Sequence[str] = "base",
    format: str | Sequence[str] = "tflite",
    quantize: str | Sequence[str] | None = None,
    remote_dir: str = DEFAULT_REMOTE_DIR,
    offline: bool = False,
    bench: BenchSettings | None = None,
    progress: Progress | None = None,
    log: Log | None = None,
    serve: bool = False,
    **ssh_options: Any,
) -> Deployment:
    """``edgeship deploy pi``: deploy, and with ``bench`` measure there (its threads and counts;
    what is measured is what was deployed) and store the results."""
    device = open_device(host, emulated=emulated, **ssh_options)
    dep = deploy(run, device, variants=variant, formats=format, quantize=quantize,
                 remote_dir=remote_dir, offline=offline, progress=progress, log=log, serve=serve)
    if bench is not None:
        start = run.begin()  # the bench stage's wall time covers the measuring, not only its commit
        dep.results = finish_results(run, bench_deployed(device, dep, threads=bench.threads, runs=bench.runs,
                                                         warmup=bench.warmup, rounds=bench.rounds,
                                                         progress=progress, log=log))
        dep.bench_files = save_results(run, dep.results, label=bench_label(device), start=start)
    return dep
