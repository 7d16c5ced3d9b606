"""The TVM build: the ONNX export compiled to a checked ``model.so`` for a target, timed here.

Kept apart from targets and tuning so the path from ONNX file to shared library reads in one
place. The build has a static batch of 1 (``export.tvm.frontend``); ``model.so`` loads with
``tvm.runtime.load_module`` + ``relax.VirtualMachine(lib, tvm.cpu())``. Builds for another
arch (rpi4/rpi5 on x86) are linked by the Debian cross compiler and checked by ELF header.
With ``trials`` the build is tuned first (``export.tvm.tuning``); both builds are timed
in-process and the faster ships, unless the tuned one disagrees with the untuned one (then
the untuned one ships and ``tuning["note"]`` says why).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.timing import time_calls
from edgeship.core.errors import EdgeshipError, InputError, MissingDependencyError
from edgeship.core.fsutil import sha256_file
from edgeship.core.names import host_arch
from edgeship.export import captured_stderr
from edgeship.export.tvm.frontend import import_onnx, load_onnx
from edgeship.export.tvm.targets import (
    CROSS_COMPILERS,
    TargetSpec,
    host_cpu,
    resolve_target,
    runtime_threads,
)
from edgeship.export.tvm.tuning import Progress, cache_folder, tuned_module

MODEL_FILE = "model.so"
ELF_MACHINES = {"x86_64": 62, "aarch64": 183}
ELF_NAMES = {"x86_64": "x86-64", "aarch64": "AArch64"}
RUNTIME_PACKAGES = ("apache-tvm", "apache-tvm-ffi")
# The tuned build must agree with the untuned one (same math, other loop order).
AGREE_RTOL, AGREE_ATOL = 1e-4, 1e-5


@dataclass
class TVMBuildResult:
    """What ``build_tvm`` wrote and measured: the TVM part of artifact.json."""

    file: Path
    bytes: int
    sha256: str
    inputs: list[dict[str, Any]]  # artifact.json I/O entries (static batch 1)
    outputs: list[dict[str, Any]]
    target: TargetSpec
    elf_machine: int
    runtime: dict[str, Any]
    untuned_ms: float | None  # in-process median per call; None when built for another arch
    tuned_ms: float | None
    tuning: dict[str, Any] | None  # None when trials == 0
    wall_s: dict[str, float] = field(default_factory=dict)

    @property
    def runs_here(self) -> bool:
        return self.target.runs_here

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["file"], d["target"] = str(self.file), self.target.to_dict()
        return d


def build_tvm(
    onnx_path: str | Path,
    out_dir: str | Path,
    target: str | dict[str, Any] = "host",
    trials: int = 0,
    time_budget_s: float | None = None,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
    num_threads: int | None = None,
    timing_runs: int = 50,
    ship: str = "faster",
    tune_on: dict[str, Any] | None = None,
) -> TVMBuildResult:
    """Compile ``onnx_path`` for ``target`` into ``out_dir/model.so``; tune first if ``trials``.

    Checks every argument before the slow work. ``progress`` defaults to a bar on stderr.
    ``ship="tuned"`` ships the tuned build even when it measured slower (benchmarks want it).
    ``tune_on`` (``{"tracker": "HOST:PORT", "key": KEY}``) tunes a build for another machine on
    that key's devices through TVM's RPC tracker (``export.tvm.remote``), then times both builds
    on one of them: the faster ships.
    Raises ``InputError`` (bad target, file or trial budget), ``MissingDependencyError`` (no
    C++ compiler for the target) or ``UnsupportedOperatorError`` (an op the frontend lacks).
    """
    t_start = time.perf_counter()
    spec = _checked_request(target, trials, time_budget_s, ship, num_threads, tune_on)
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    proto = load_onnx(onnx_path)

    import tvm
    import tvm_ffi

    t0 = time.perf_counter()
    mod, inputs, outputs = import_onnx(proto)
    wall = {"import_s": time.perf_counter() - t0}
    model_hash = f"{tvm_ffi.structural_hash(mod):016x}"  # names aside: graph and weights
    tvm_target = tvm.target.Target(spec.tvm)
    t0 = time.perf_counter()
    untuned = tvm.compile(mod, target=tvm_target)
    wall["build_s"] = time.perf_counter() - t0
    shipped, untuned_ms, tuned_ms, tuning = untuned, None, None, None
    if spec.runs_here:
        tune = None
        if trials:
            folder = cache_folder(cache_dir, model_hash, spec)
            tune = functools.partial(tuned_module, mod, onnx_path, spec, folder, model_hash, trials,
                                     time_budget_s, progress)
        shipped, untuned_ms, tuned_ms, tuning = _time_and_tune(untuned, tvm_target, spec, inputs, timing_runs,
                                                               ship, wall, tune)
    elif trials and tune_on:
        folder = cache_folder(cache_dir, model_hash, spec, tune_on["key"])
        tune = functools.partial(tuned_module, mod, onnx_path, spec, folder, model_hash, trials,
                                 time_budget_s, progress, tune_on=tune_on)
        shipped, tuning = _tuned_on_devices(tune, tvm_target, tune_on, wall, untuned, spec, inputs, ship)
    path = _write_library(shipped, spec, out_dir / MODEL_FILE)
    machine = _checked_elf(path, spec)

    wall["total_s"] = time.perf_counter() - t_start
    return TVMBuildResult(
        file=path, bytes=path.stat().st_size, sha256=sha256_file(path), inputs=inputs,
        outputs=outputs, target=spec, elf_machine=machine, runtime=runtime_requirement(),
        untuned_ms=untuned_ms, tuned_ms=tuned_ms, tuning=tuning,
        wall_s={k: round(v, 3) for k, v in wall.items()},
    )


def _tuned_on_devices(
    tune: Callable[[], tuple[dict[str, Any], Any]], tvm_target: Any, tune_on: dict[str, Any],
    wall: dict[str, float], untuned: Any, spec: TargetSpec, inputs: list[dict[str, Any]], ship: str,
) -> tuple[Any, dict[str, Any]]:
    """Tune through the tracker, build the tuned module, time both builds on a device of the key
    (this machine cannot run them) and ship as ``_pick_tuned`` says."""
    import tvm

    from edgeship.export.tvm.remote import time_on_device

    tuning, tuned_mod = tune()
    t0 = time.perf_counter()
    tuned = tvm.compile(tuned_mod, target=tvm_target)
    wall["tuned_build_s"], wall["tune_s"] = time.perf_counter() - t0, tuning["tune_s"]
    timed = time_on_device(tune_on, {"untuned": untuned, "tuned": tuned}, _sample_inputs(inputs),
                           spec.cross_compiler)
    u_ms, t_ms = timed["ms"]["untuned"], timed["ms"]["tuned"]
    tuning.update(untuned_ms=u_ms, tuned_ms=t_ms, speedup=u_ms / t_ms, timed_on=timed["device"])
    use = _pick_tuned(tuning, timed["outputs"]["untuned"], timed["outputs"]["tuned"], ship)
    return (tuned if use else untuned), tuning


def _checked_request(target: str | dict[str, Any], trials: int, time_budget_s: float | None, ship: str,
                     num_threads: int | None, tune_on: dict[str, Any] | None = None) -> TargetSpec:
    """``build_tvm``'s arguments checked (before any slow work) -> the resolved target."""
    if trials < 0:
        raise InputError(f"trials must be 0 or more, got {trials}")
    if ship not in ("faster", "tuned"):
        raise InputError(f"ship must be 'faster' or 'tuned', not {ship!r}")
    if time_budget_s is not None and time_budget_s <= 0:
        raise InputError(f"the tuning time budget must be positive, got {time_budget_s} s")
    spec = resolve_target(target, num_threads)
    if trials and not spec.runs_here and not tune_on:
        raise InputError(f"cannot tune for {spec.name} ({spec.arch}, {spec.mcpu or 'generic'}) on this "
                         f"{host_arch()} {host_cpu()} machine: tuning measures on the device; export "
                         "with trials 0 (untuned), or tune on devices through a tracker (tune_on)")
    _check_compiler(spec)
    if trials and not spec.runs_here and tune_on:
        from edgeship.export.tvm.remote import free_devices

        free_devices(tune_on["tracker"], tune_on["key"])  # none: one line naming `fleet join`
    return spec


def _time_and_tune(
    untuned: Any, tvm_target: Any, spec: TargetSpec, inputs: list[dict[str, Any]], runs: int, ship: str,
    wall: dict[str, float], tune: Callable[[], tuple[dict[str, Any], Any]] | None,
) -> tuple[Any, float, float | None, dict[str, Any] | None]:
    """Time the untuned build here; with ``tune``, tune, build and time the tuned one, and pick
    the one to ship. Returns (shipped build, untuned ms, tuned ms, tuning facts)."""
    import tvm
    from tvm import relax

    x = _sample_inputs(inputs)
    with _runtime_threads_set(spec.num_cores):
        vm_u = relax.VirtualMachine(untuned, tvm.cpu())
        untuned_ms = _time_vm(vm_u, x, runs)
        if tune is None:
            return untuned, untuned_ms, None, None
        tuning, tuned_mod = tune()
        t0 = time.perf_counter()
        tuned = tvm.compile(tuned_mod, target=tvm_target)
        wall["tuned_build_s"] = time.perf_counter() - t0
        wall["tune_s"] = tuning["tune_s"]
        vm_t = relax.VirtualMachine(tuned, tvm.cpu())
        tuned_ms = _time_vm(vm_t, x, runs)
        tuning.update(untuned_ms=untuned_ms, tuned_ms=tuned_ms, speedup=untuned_ms / tuned_ms)
        use = _pick_tuned(tuning, _outputs(vm_u, x), _outputs(vm_t, x), ship)
    return (tuned if use else untuned), untuned_ms, tuned_ms, tuning


def _pick_tuned(tuning: dict[str, Any], ref: list[np.ndarray], got: list[np.ndarray], ship: str) -> bool:
    """Ship the tuned build if it agrees with the untuned one and (unless ``ship="tuned"``) is
    faster; record the choice and why in ``tuning``."""
    pairs = list(zip(ref, got, strict=True))
    diff = max((float(np.max(np.abs(a - b))) for a, b in pairs if a.size), default=0.0)
    agree = all(np.allclose(a, b, rtol=AGREE_RTOL, atol=AGREE_ATOL) for a, b in pairs)
    notes = [tuning["note"]] if tuning.get("note") else []
    if not agree:
        notes.append(f"the tuned build disagreed with the untuned one (max abs diff {diff:.3g}): "
                     "shipped the untuned build")
    elif ship == "faster" and tuning["tuned_ms"] > tuning["untuned_ms"]:
        notes.append("the tuned build measured slower: shipped the untuned build; tune with more trials")
    use = agree and (ship == "tuned" or tuning["tuned_ms"] <= tuning["untuned_ms"])
    tuning.update(tuned_max_abs_diff=diff, shipped="tuned" if use else "untuned",
                  note="; ".join(notes) or None)
    return use


def runtime_requirement() -> dict[str, Any]:
    """The runtime a device needs: the very TVM and TVM-FFI versions that built the library."""
    versions = {p: metadata.version(p) for p in RUNTIME_PACKAGES}
    return {"name": "apache-tvm", "version": versions["apache-tvm"],
            "requirements": [f"{p}=={v}" for p, v in versions.items()] + ["numpy"]}


def _check_compiler(spec: TargetSpec) -> None:
    if spec.cross_compiler:
        exe, package = CROSS_COMPILERS[spec.arch]
        if shutil.which(exe) is None:
            raise MissingDependencyError(
                f"building for {spec.name} ({spec.arch}) needs the cross compiler {exe}: "
                f"apt-get install {package}")
        return
    from tvm.support import cc

    if cc.get_cc() is None:
        raise MissingDependencyError("building a TVM library needs a C++ compiler: apt-get install g++")


# ---------------------------------------------------------------- ELF


def elf_machine(path: str | Path) -> int:
    """``e_machine`` of an ELF file (62 x86-64, 183 AArch64), read from its header."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise EdgeshipError(f"{path} is not an ELF file; the TVM build is broken, re-export")
    order = "little" if head[5] == 1 else "big"
    return int.from_bytes(head[18:20], order)


def _checked_elf(path: Path, spec: TargetSpec) -> int:
    """The library's ELF machine, which must be the target arch's (else the linker was wrong)."""
    machine = elf_machine(path)
    if machine != ELF_MACHINES.get(spec.arch, machine):
        raise EdgeshipError(f"{path} has ELF machine {machine}, not {spec.arch} "
                            f"({ELF_MACHINES[spec.arch]}); check the cross compiler")
    return machine


def elf_checks(arch: str, machine: int) -> dict[str, bool]:
    """The static check a build for another machine is validated by: ``{name: passed}``."""
    return {f"elf machine is {ELF_NAMES.get(arch, arch)}": machine == ELF_MACHINES.get(arch)}


# ---------------------------------------------------------------- running it here


def median_call_ms(fn: Callable[[], Any], runs: int = 50, warmup: int = 5) -> float:
    """Median milliseconds per call, by ``edge_runtime``'s timing loop (the benchmarks' method)."""
    return statistics.median(time_calls(fn, runs, warmup)) / 1e6


@contextlib.contextmanager
def _runtime_threads_set(n: int | None) -> Iterator[None]:
    """Run TVM with ``n`` threads here, then put back the count and this thread's CPU affinity
    (TVM's pool pins the calling thread, which would otherwise stick for the rest of the run)."""
    import tvm_ffi

    config = tvm_ffi.get_global_func("runtime.config_threadpool")
    affinity = os.sched_getaffinity(0)
    before = runtime_threads()
    if n and n != before:
        config(1, n)
    try:
        yield
    finally:
        if n and n != before:
            config(1, before)
        os.sched_setaffinity(0, affinity)


def _sample_inputs(inputs: list[dict[str, Any]]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(i["shape"]).astype(i["dtype"]) for i in inputs]


def _outputs(vm: Any, x: list[np.ndarray]) -> list[np.ndarray]:
    import tvm

    out = vm["main"](*[tvm.runtime.tensor(a) for a in x])
    return [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]


def _time_vm(vm: Any, x: list[np.ndarray], runs: int) -> float:
    import tvm

    main, args = vm["main"], [tvm.runtime.tensor(a) for a in x]
    return median_call_ms(lambda: main(*args), runs=runs, warmup=5)


def _write_library(ex: Any, spec: TargetSpec, path: Path) -> Path:
    """``export_library`` to a temp name beside ``path``, then rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    from tvm.support import cc

    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.so")
    fcompile = cc.cross_compiler(spec.cross_compiler) if spec.cross_compiler else None
    try:
        with captured_stderr():  # TVM warns "Scope Saving:" for every library it writes
            ex.export_library(str(tmp), fcompile=fcompile)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
