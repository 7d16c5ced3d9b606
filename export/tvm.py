"""TVM export: Relax from the ONNX export, compiled to a shared library the Relax VM loads.

API (the rest is private)::

    build_tvm(onnx_path, out_dir, target="host", trials=0, time_budget_s=None, cache_dir=None,
              progress=None, num_threads=None, timing_runs=50, ship="faster") -> TVMBuildResult
    export_artifact(request: ExportRequest) -> ExportedModel   # export.FORMATS["tvm"]
    resolve_target(target, num_threads=None) -> TargetSpec      # "host" | "rpi4" | "rpi5" | JSON
    elf_machine(path) -> int                                    # e_machine from the ELF header
    median_call_ms(fn, runs=50, warmup=5) -> float              # the in-process timing

The build has a static batch of 1 (Relax tunes and plans memory for static shapes);
``edge_runtime`` runs larger batches in chunks. ``model.so`` loads with
``tvm.runtime.load_module`` + ``relax.VirtualMachine(lib, tvm.cpu())``. Builds for another
arch (rpi4/rpi5 on x86) are linked by the Debian cross compiler and checked by ELF header.

Tuning (``trials > 0``) measures candidates, so only targets this machine can run are tuned.
It runs MetaSchedule on the tasks ``relax.pipeline.static_shape_tuning_pipeline`` extracts,
then applies the database with that pipeline (``total_trials=0``). It drives MetaSchedule
itself rather than through the pipeline's tuning pass because, on a busy 2-core machine, the
pass tunes nothing: its builder starts fresh workers for every batch and each imports every
tensor intrinsic (CUDA, ROCm, Hexagon...; ~25 s of CPU), so every build hits the 30 s timeout.
Here builder workers live for the whole session and skip that import; tasks are tuned
heaviest first (FLOPs x weight) in groups of four, so a short budget goes to the kernels
that matter and the time budget is checked between batches and groups; progress is reported
after each batch. Tuning runs in a child Python (``python -m edgeship.export.tvm --tune``): the one
import MetaSchedule itself needs costs ~25 s of CPU alone but ~70 s beside TensorFlow (see
``_tune_in_child``), and a crash in tuning must not take the export down with it.

The database lives in ``<cache>/<model hash>-<target name>-<hash of target + TVM>/``, the model
hash being Relax's structural hash of the imported graph and weights (tf2onnx names nodes
with a per-process counter, so the ONNX bytes of one model differ between conversions)
(cache default ``$XDG_CACHE_HOME/edgeship/tvm``, else ``~/.cache/edgeship/tvm``) beside
``edgeship-tuning.json``, which counts the trials it covers: a re-export asking for no more
reuses it without tuning (``cache_hit``), one asking for more tunes only the difference.
Both builds are timed in-process; the faster ships, unless the tuned one disagrees with the
untuned one (then the untuned one ships and ``tuning["note"]`` says why).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.core.errors import EdgeshipError, InputError, MissingDependencyError
from edgeship.core.fsutil import locked
from edgeship.core.names import host_arch

MODEL_FILE = "model.so"
TARGET_NAMES = ("host", "rpi4", "rpi5")
TUNING_META = "edgeship-tuning.json"
CROSS_COMPILERS = {"aarch64": ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu")}
ELF_MACHINES = {"x86_64": 62, "aarch64": 183}
RUNTIME_PACKAGES = ("apache-tvm", "apache-tvm-ffi")
# The tuned build must agree with the untuned one (same math, other loop order).
AGREE_RTOL, AGREE_ATOL = 1e-4, 1e-5
_PI = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 4}
PI_TARGETS = {
    "rpi4": {**_PI, "mcpu": "cortex-a72"},
    "rpi5": {**_PI, "mcpu": "cortex-a76"},
}

Progress = Callable[[int, int, str], None]
"""``progress(trials_done, trials_total, status)``, called after each tuning batch."""


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: the TVM JSON dict plus the facts artifact.json records."""

    name: str  # host | rpi4 | rpi5 | custom
    tvm: dict[str, Any]
    arch: str  # x86_64 | aarch64
    triple: str
    mcpu: str | None
    num_cores: int | None

    @property
    def cross_compiler(self) -> str | None:
        """The g++ that links for this arch, or None when it is this machine's arch."""
        return None if self.arch == host_arch() else CROSS_COMPILERS[self.arch][0]

    @property
    def runs_here(self) -> bool:
        """Whether this machine can run (so time and tune) the build: same arch, and no
        ``mcpu`` other than this CPU's (code for another CPU may use instructions it lacks)."""
        return self.arch == host_arch() and self.mcpu in (None, host_cpu())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arch": self.arch, "triple": self.triple, "mcpu": self.mcpu,
                "num_cores": self.num_cores, "tvm": self.tvm}


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


# ---------------------------------------------------------------- targets


@functools.cache
def host_cpu() -> str:
    """This CPU's LLVM name (e.g. skylake-avx512, cortex-a72)."""
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def _arch_of(triple: str) -> str:
    head = triple.split("-")[0].lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(head, head)


def _runtime_threads() -> int:
    """Threads TVM's runtime uses here by default ($TVM_NUM_THREADS, else its own guess)."""
    import tvm_ffi

    return int(tvm_ffi.get_global_func("runtime.NumThreads")())


def resolve_target(target: str | dict[str, Any], num_threads: int | None = None) -> TargetSpec:
    """A target name or JSON object -> ``TargetSpec``, or a one-line ``InputError``.

    ``host`` names this CPU (``mcpu`` from LLVM: tuning needs it to use AVX2/AVX-512) with
    ``num-cores`` = ``num_threads`` or the TVM runtime's default thread count here, so tuning
    measures what the artifact will run with.
    """
    import tvm
    from tvm.target import codegen

    if num_threads is not None and num_threads < 1:
        raise InputError(f"num_threads must be 1 or more, got {num_threads}")
    name = "custom"
    if isinstance(target, str):
        text = target.strip()
        if text == "host":
            cfg: dict[str, Any] = {"kind": "llvm", "mcpu": host_cpu(),
                                   "num-cores": num_threads or _runtime_threads()}
            name = "host"
        elif text in PI_TARGETS:
            cfg, name = dict(PI_TARGETS[text]), text
        elif text.startswith(("{", "[")):
            try:
                cfg = json.loads(text)
            except json.JSONDecodeError as e:
                raise InputError(f"the TVM target is not valid JSON ({e.msg} at column {e.colno}); "
                                 'e.g. {"kind": "llvm", "mcpu": "cortex-a72"}') from None
        else:
            raise InputError(f"unknown TVM target '{text}'; choose {', '.join(TARGET_NAMES)} or a "
                             'JSON object such as {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}')
    elif isinstance(target, dict):
        cfg = dict(target)
    else:
        raise InputError(f"a TVM target is a name or a JSON object, not {type(target).__name__}")
    if not isinstance(cfg, dict):
        raise InputError(f"the TVM target JSON must be an object, got {type(cfg).__name__}")
    if cfg.get("kind") != "llvm":
        raise InputError(f"TVM target kind {cfg.get('kind')!r} is not supported: edgeship builds CPU "
                         'libraries, use "kind": "llvm"')
    try:
        tvm_target = tvm.target.Target(cfg)
    except ValueError as e:
        raise InputError(f"invalid TVM target {json.dumps(cfg)}: {str(e).splitlines()[0]}") from None
    triple = str(cfg.get("mtriple") or codegen.llvm_get_system_triple())
    arch = _arch_of(triple)
    if arch != host_arch() and arch not in CROSS_COMPILERS:
        raise InputError(f"TVM target triple {triple!r}: edgeship builds for this machine "
                         f"({host_arch()}) or aarch64 (Raspberry Pi), not {arch}")
    mcpu = cfg.get("mcpu")
    if mcpu is not None and str(mcpu) not in codegen.llvm_get_cpu_archlist(tvm_target):
        raise InputError(f"TVM target mcpu {mcpu!r} is not a CPU LLVM knows for {triple} "
                         "(e.g. cortex-a72, cortex-a76, skylake-avx512)")
    cores = cfg.get("num-cores")
    return TargetSpec(name=name, tvm=cfg, arch=arch, triple=triple,
                      mcpu=None if mcpu is None else str(mcpu),
                      num_cores=None if cores is None else int(cores))


# ---------------------------------------------------------------- ELF


def elf_machine(path: str | Path) -> int:
    """``e_machine`` of an ELF file (62 x86-64, 183 AArch64), read from its header."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise EdgeshipError(f"{path} is not an ELF file; the TVM build is broken, re-export")
    order = "little" if head[5] == 1 else "big"
    return int.from_bytes(head[18:20], order)


# ---------------------------------------------------------------- timing


def median_call_ms(fn: Callable[[], Any], runs: int = 50, warmup: int = 5) -> float:
    """Median milliseconds per call, by ``edge_runtime``'s timing loop (the benchmarks' method)."""
    from edge_runtime.timing import time_calls

    return statistics.median(time_calls(fn, runs, warmup)) / 1e6


@contextlib.contextmanager
def _runtime_threads_set(n: int | None) -> Iterator[None]:
    """Run TVM with ``n`` threads here, then put back the count and this thread's CPU affinity
    (TVM's pool pins the calling thread, which would otherwise stick for the rest of the run)."""
    import tvm_ffi

    config = tvm_ffi.get_global_func("runtime.config_threadpool")
    affinity = os.sched_getaffinity(0)
    before = _runtime_threads()
    if n and n != before:
        config(1, n)
    try:
        yield
    finally:
        if n and n != before:
            config(1, before)
        os.sched_setaffinity(0, affinity)


# ---------------------------------------------------------------- the build


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
) -> TVMBuildResult:
    """Compile ``onnx_path`` for ``target`` into ``out_dir/model.so``; tune first if ``trials``.

    Checks every argument before the slow work. ``progress`` defaults to a bar on stderr.
    ``ship="tuned"`` ships the tuned build even when it measured slower (benchmarks want it).
    Raises ``InputError`` (bad target, file or trial budget), ``MissingDependencyError`` (no
    C++ compiler for the target) or ``UnsupportedOperatorError`` (an op the frontend lacks).
    """
    t_start = time.perf_counter()
    if trials < 0:
        raise InputError(f"trials must be 0 or more, got {trials}")
    if ship not in ("faster", "tuned"):
        raise InputError(f"ship must be 'faster' or 'tuned', not {ship!r}")
    if time_budget_s is not None and time_budget_s <= 0:
        raise InputError(f"the tuning time budget must be positive, got {time_budget_s} s")
    spec = resolve_target(target, num_threads)
    if trials and not spec.runs_here:
        raise InputError(f"cannot tune for {spec.name} ({spec.arch}, {spec.mcpu or 'generic'}) on this "
                         f"{host_arch()} {host_cpu()} machine: tuning measures on the device; export "
                         "with trials 0 (untuned)")
    _check_compiler(spec)
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    proto = _load_onnx(onnx_path)

    import tvm
    import tvm_ffi
    from tvm import relax

    t0 = time.perf_counter()
    mod, inputs, outputs = _import_onnx(proto)
    wall = {"import_s": time.perf_counter() - t0}
    model_hash = f"{tvm_ffi.structural_hash(mod):016x}"  # names aside: graph and weights
    tvm_target = tvm.target.Target(spec.tvm)
    t0 = time.perf_counter()
    untuned = tvm.compile(mod, target=tvm_target)
    wall["build_s"] = time.perf_counter() - t0
    shipped, untuned_ms, tuned_ms, tuning = untuned, None, None, None
    if spec.runs_here:
        x = _sample_inputs(inputs)
        with _runtime_threads_set(spec.num_cores):
            vm_u = relax.VirtualMachine(untuned, tvm.cpu())
            untuned_ms = _time_vm(vm_u, x, timing_runs)
            if trials:
                key_dir = _cache_dir(cache_dir) / _cache_key(model_hash, spec)
                tuning, tuned_mod = _tuned_module(mod, onnx_path, spec, key_dir, model_hash, trials,
                                                  time_budget_s, progress)
                t0 = time.perf_counter()
                tuned = tvm.compile(tuned_mod, target=tvm_target)
                wall["tuned_build_s"] = time.perf_counter() - t0
                wall["tune_s"] = tuning["tune_s"]
                vm_t = relax.VirtualMachine(tuned, tvm.cpu())
                tuned_ms = _time_vm(vm_t, x, timing_runs)
                tuning.update(untuned_ms=untuned_ms, tuned_ms=tuned_ms, speedup=untuned_ms / tuned_ms)
                if _pick_tuned(tuning, _outputs(vm_u, x), _outputs(vm_t, x), ship):
                    shipped = tuned
    path = _write_library(shipped, spec, out_dir / MODEL_FILE)
    machine = elf_machine(path)
    if machine != ELF_MACHINES.get(spec.arch, machine):
        raise EdgeshipError(f"{path} has ELF machine {machine}, not {spec.arch} "
                            f"({ELF_MACHINES[spec.arch]}); check the cross compiler")
    from edgeship.core.fsutil import sha256_file

    wall["total_s"] = time.perf_counter() - t_start
    return TVMBuildResult(
        file=path, bytes=path.stat().st_size, sha256=sha256_file(path), inputs=inputs,
        outputs=outputs, target=spec, elf_machine=machine, runtime=runtime_requirement(),
        untuned_ms=untuned_ms, tuned_ms=tuned_ms, tuning=tuning,
        wall_s={k: round(v, 3) for k, v in wall.items()},
    )


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


def _load_onnx(path: Path) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise InputError(f"ONNX file {path} does not exist; export ONNX first")
    try:
        return onnx.load_model_from_string(path.read_bytes())
    except DecodeError as e:
        raise InputError(f"{path} is not a readable ONNX model ({e}); re-export it") from None


def _import_onnx(proto: Any) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    """ONNX -> Relax with batch 1, plus artifact.json I/O entries; unsupported ops named."""
    import tvm
    from onnx import helper
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from edgeship.export import UnsupportedOperatorError

    initializers = {t.name for t in proto.graph.initializer}
    shapes: dict[str, list[int]] = {}
    inputs = []
    for v in proto.graph.input:
        if v.name in initializers:
            continue
        tt = v.type.tensor_type
        dims = []
        for i, d in enumerate(tt.shape.dim):
            if d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif i == 0:
                dims.append(1)  # the free batch: fixed at 1
            else:
                raise InputError(f"ONNX input {v.name!r} has a free dimension {i} "
                                 f"({d.dim_param or '?'}); TVM needs static shapes beyond the batch")
        shapes[v.name] = dims
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        inputs.append({"name": v.name, "shape": dims, "dtype": dtype, "quantization": None})
    try:
        mod = from_onnx(proto, shape_dict=shapes, dtype_dict={k["name"]: k["dtype"] for k in inputs},
                        keep_params_in_input=False)
    except tvm.error.OpNotImplemented as e:
        ops = str(e).split(":", 1)[-1].split("\n")[0].strip()
        names = sorted({o.strip() for o in ops.split(",") if o.strip()})
        nodes = [f"{n.op_type} (node {n.name!r})" for n in proto.graph.node if n.op_type in names]
        raise UnsupportedOperatorError(
            f"TVM's Relax ONNX frontend (tvm.relax.frontend.onnx.from_onnx, apache-tvm "
            f"{tvm.__version__}) does not support {', '.join(dict.fromkeys(nodes)) or ops}; "
            "use the tflite or onnx format for this model") from None
    except (tvm.error.OpError, NotImplementedError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
        raise UnsupportedOperatorError(
            f"TVM's Relax ONNX frontend (tvm.relax.frontend.onnx.from_onnx, apache-tvm "
            f"{tvm.__version__}) cannot convert this model: {first}; use the tflite or onnx format"
        ) from None
    ret = mod["main"].ret_ty
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    outputs = [
        {"name": v.name, "shape": [int(d) for d in ty.shape.values], "dtype": str(ty.dtype),
         "quantization": None}
        for v, ty in zip(proto.graph.output, fields, strict=True)
    ]
    return mod, inputs, outputs


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

    from edgeship.export import captured_stderr

    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.so")
    fcompile = cc.cross_compiler(spec.cross_compiler) if spec.cross_compiler else None
    try:
        with captured_stderr():  # TVM warns "Scope Saving:" for every library it writes
            ex.export_library(str(tmp), fcompile=fcompile)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------- the tuning cache


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "edgeship" / "tvm"


def _cache_dir(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _cache_key(model_hash: str, spec: TargetSpec) -> str:
    import tvm

    blob = json.dumps({"target": spec.tvm, "tvm": tvm.__version__}, sort_keys=True)
    return f"{model_hash}-{spec.name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def _locked(folder: Path) -> Any:
    """One tuner per cache folder: two exports of the same model wait rather than interleave."""
    return locked(folder / ".lock")


def _read_meta(folder: Path) -> dict[str, Any]:
    """The cache's trial count, or an empty record when the database files are gone."""
    meta_path = folder / TUNING_META
    db = [folder / "database_workload.json", folder / "database_tuning_record.json"]
    if not meta_path.is_file() or not all(p.is_file() and p.stat().st_size for p in db):
        return {"trials": 0, "sessions": []}
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {"trials": 0, "sessions": []}
    return meta if isinstance(meta.get("trials"), int) else {"trials": 0, "sessions": []}


def _tuned_module(
    mod: Any, onnx_path: Path, spec: TargetSpec, folder: Path, model_hash: str, trials: int,
    time_budget_s: float | None, progress: Progress | None,
) -> tuple[dict[str, Any], Any]:
    """Tune what the cache lacks, then apply the database; returns (tuning facts, module)."""
    import tvm
    from tvm import relax

    from edgeship.core.fsutil import write_json_atomic
    from edgeship.export import captured_stderr

    with _locked(folder):
        meta = _read_meta(folder)
        cached = int(meta["trials"])
        need = max(0, trials - cached)
        t0 = time.perf_counter()
        outcome: dict[str, Any] = {"trials_run": 0, "stopped_early": False, "tasks": None,
                                   "max_trials_per_task": None, "setup_s": None}
        if need:
            with _progress_sink(progress, need) as report:
                outcome = _tune_in_child(onnx_path, spec, folder, need, time_budget_s, report)
            # A finished session covers the whole request even when tasks ran out of candidates
            # first; one cut short by the budget covers only what it measured.
            done = outcome["trials_run"] if outcome["stopped_early"] else need
            meta.update(model_hash=model_hash, target=spec.tvm, trials=cached + done)
            meta.setdefault("sessions", []).append({
                "requested": need, "run": outcome["trials_run"], "stopped_early": outcome["stopped_early"],
                "seconds": round(time.perf_counter() - t0, 1)})
            write_json_atomic(folder / TUNING_META, meta)
        elif progress is not None:
            progress(trials, trials, "cache hit: reusing the tuning database")
        tune_s = time.perf_counter() - t0
        with captured_stderr():  # "Creating JSONDatabase" on every load
            tuned = relax.pipeline.static_shape_tuning_pipeline(
                total_trials=0, target=tvm.target.Target(spec.tvm), work_dir=str(folder))(mod)
    note = None
    if outcome["stopped_early"]:
        note = (f"time budget {time_budget_s:g} s reached after {outcome['trials_run']} of {need} "
                "trials; a re-export with the same cache tunes the rest")
    return {
        "trials_requested": trials,
        "trials_run": outcome["trials_run"],
        "trials_in_cache": int(meta["trials"]),
        "tasks": outcome["tasks"],
        "max_trials_per_task": outcome["max_trials_per_task"],
        "setup_s": outcome["setup_s"],
        "cache_dir": str(folder),
        "cache_key": folder.name,
        "cache_hit": need == 0,
        "time_budget_s": time_budget_s,
        "stopped_early": outcome["stopped_early"],
        "tune_s": round(tune_s, 3),
        "note": note,
    }, tuned


@contextlib.contextmanager
def _progress_sink(progress: Progress | None, total: int) -> Iterator[Progress]:
    """The caller's callback, or a rich bar on stderr (one line per update off a terminal)."""
    if progress is not None:
        yield progress
        return
    from edgeship.core.console import progress as bar

    with bar("tuning (TVM MetaSchedule)", total=total) as p:
        seen = [0]

        def report(done: int, _total: int, status: str) -> None:
            p.update(advance=max(0, done - seen[0]), status=status)
            seen[0] = max(seen[0], done)

        yield report


# ---------------------------------------------------------------- MetaSchedule


def _tune_in_child(
    onnx_path: Path, spec: TargetSpec, folder: Path, trials: int, time_budget_s: float | None,
    report: Progress,
) -> dict[str, Any]:
    """``_run_tuning`` in a fresh Python (``python -m edgeship.export.tvm``), for two reasons: MetaSchedule's
    first use imports TVM's tensor intrinsics, whose TVMScript parsing calls
    ``inspect.getmodule`` ~34,000 times, each scanning ``sys.modules``: 23 s of CPU in a bare
    process, 71 s beside TensorFlow's 4,000 modules (any process that trained or converted);
    and a crash in tuning (apache-tvm-ffi 0.1.15 segfaults there) must not take the export
    with it. Progress comes back as JSON lines on the child's stdout."""
    import subprocess
    import sys

    job = {"onnx": str(onnx_path), "target": spec.tvm, "name": spec.name, "folder": str(folder),
           "trials": trials, "deadline": None if time_budget_s is None else time.time() + time_budget_s}
    env = dict(os.environ)
    import edgeship.core

    root = str(Path(edgeship.core.__file__).resolve().parents[2])  # the folder holding edgeship
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    outcome = None
    with subprocess.Popen([sys.executable, "-m", "edgeship.export.tvm", "--tune", json.dumps(job)],
                          stdout=subprocess.PIPE, env=env, text=True) as child:
        assert child.stdout is not None
        for line in child.stdout:
            msg = json.loads(line)
            if "progress" in msg:
                report(*msg["progress"])
            else:
                outcome = msg.get("outcome")
        code = child.wait()
    if code != 0 or outcome is None:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        raise EdgeshipError(f"TVM tuning {how} (its messages are above); check apache-tvm-ffi is "
                            "0.1.14.post0 (0.1.15 segfaults in tuning), or export with trials 0")
    return outcome


def _child_main(argv: list[str]) -> int:
    """The tuning child: reads the job, tunes, writes JSON lines on the original stdout."""
    import sys

    if len(argv) != 2 or argv[0] != "--tune":
        print("usage: python -m edgeship.export.tvm --tune JOB_JSON (internal: build_tvm runs it)",
              file=sys.stderr)
        return 2
    job = json.loads(argv[1])
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed (TVM's own logs) goes to stderr, not into the channel
    sys.stdout = sys.stderr

    def report(done: int, total: int, status: str) -> None:
        channel.write(json.dumps({"progress": [done, total, status]}) + "\n")

    spec = replace(resolve_target(job["target"]), name=job["name"])
    mod, _, _ = _import_onnx(_load_onnx(Path(job["onnx"])))
    outcome = _run_tuning(mod, spec, Path(job["folder"]), job["trials"], job["deadline"], report)
    channel.write(json.dumps({"outcome": outcome}) + "\n")
    channel.close()
    return 0


class _Budget:
    """Shared by the builder wrapper and the measure callback: trials, batches, deadline
    (wall-clock seconds since the epoch, so it can be set in one process and kept in another)."""

    def __init__(self, total: int, deadline: float | None, report: Progress):
        self.total, self.report = total, report
        self.start = time.time()
        self.deadline = deadline
        self.built = self.joined = self.trials = 0
        self.stopped = False
        self.setup_s: float | None = None  # until the first build: MetaSchedule's imports, search

    def expired(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline


def _make_build_worker() -> Callable[[Any, Any], str]:
    """Builds one candidate in a worker: TVM's default build minus its import of every tensor
    intrinsic (see the module docstring), linked to a .so there (in parallel) rather than in
    the single measuring worker. Nested so the worker receives it by value."""

    def build(mod: Any, target: Any) -> str:
        import tempfile

        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        lib = tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)
        path = os.path.join(tempfile.mkdtemp(prefix="edgeship-ms-"), "candidate.so")
        lib.export_library(path)
        return path

    return build


GROUP = 4  # tasks tuned together; the time budget is checked between groups
XGB_WARMUP = 100  # measured samples before MetaSchedule's XGBoost model is trusted


def _run_tuning(
    mod: Any, spec: TargetSpec, folder: Path, trials: int, deadline: float | None, report: Progress,
) -> dict[str, Any]:
    """MetaSchedule on the tasks ``static_shape_tuning_pipeline`` would tune, heaviest first.

    Tasks go in groups of ``GROUP`` by estimated FLOPs x weight, sharing one cost model,
    database, builder and runner, so a short budget goes to the kernels that dominate and a
    deadline is noticed between groups rather than after a round over every task.
    """
    import logging

    import tvm
    from tvm import relax
    from tvm.relax import transform
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops
    from tvm.s_tir.meta_schedule.runner import LocalRunner
    from tvm.support.popen_pool import PopenPoolExecutor

    tvm_target = tvm.target.Target(spec.tvm)
    with tvm_target:  # the same preparation as static_shape_tuning_pipeline
        prepared = tvm.transform.Sequential([
            transform.DecomposeOpsForInference(), transform.CanonicalizeBindings(),
            relax.pipeline.zero_pipeline()])(mod)
    extracted = ms.relax_integration.extract_tasks(prepared, tvm_target)
    extracted.sort(key=lambda t: -estimate_tir_flops(t.dispatched[0]) * t.weight)
    n_tasks = len(extracted)
    average = max(1, math.ceil(trials / max(1, n_tasks)))
    # One batch per task, two once there are enough trials (the second guided by a cost model
    # that has seen the first); each batch costs a search, so tiny budgets get one. A task may
    # take up to twice the average so the scheduler can give trials to tasks still improving.
    batch = average if average < 16 else min(64, math.ceil(average / 2))
    cap = min(trials, 2 * average)
    # The search costs about population x iterations cost-model calls per batch whatever the
    # batch size: shrink it for small batches so tiny budgets are not all search overhead.
    population = min(512, max(128, 8 * batch))
    strategy = ms.search_strategy.EvolutionarySearch(
        population_size=population, genetic_num_iters=4 if population >= 512 else 2)
    budget = _Budget(trials, deadline, report)
    report(0, trials, f"{n_tasks} tasks, up to {cap} trials each")
    if budget.expired():  # before MetaSchedule's slow first import
        report(0, trials, "stopped: time budget")
        return {"trials_run": 0, "stopped_early": True, "tasks": n_tasks, "max_trials_per_task": cap,
                "setup_s": None}

    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    ms_logger.setLevel(logging.WARNING)  # its console handler prints INFO tables on stdout
    # MetaSchedule re-configures this logger by handler name: one it did not make (pytest's
    # capture handler, say) would break a second tuning in the process. Set them aside.
    foreign = [h for h in ms_logger.handlers if not (h.get_name() or "").startswith(ms_logger.name)]
    for h in foreign:
        ms_logger.removeHandler(h)
    saved_env = os.environ.get("TVM_NUM_THREADS")
    if spec.num_cores:  # the measuring worker runs kernels with the artifact's thread count
        os.environ["TVM_NUM_THREADS"] = str(spec.num_cores)
    runner = pool = None
    try:
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            extracted, str(folder), strategy=strategy, seed=0)
        runner = LocalRunner(timeout_sec=60)
        pool = PopenPoolExecutor(max_workers=max(1, os.cpu_count() or 1), timeout=120)
        shared = {
            "builder": _budget_builder(pool, budget),
            "runner": runner,
            "database": ms.Database.create("json", work_dir=str(folder)),
            "cost_model": _cost_model(trials, contexts[0].num_threads),
            "measure_callbacks": [*ms.MeasureCallback.create("default"), _joined_callback(budget)],
        }
        for i in range(0, len(contexts), GROUP):
            left = trials - budget.trials
            if left <= 0 or budget.expired():
                break
            group = contexts[i:i + GROUP]
            share = min(left, math.ceil(left * len(group) / (len(contexts) - i)))
            try:
                ms.tune_tasks(tasks=group, task_weights=weights[i:i + GROUP], work_dir=str(folder),
                              max_trials_global=share, max_trials_per_task=cap,
                              num_trials_per_iter=batch, **shared)
            except RuntimeError:
                if not budget.stopped:
                    raise
                break
    finally:
        ms_logger.setLevel(logging.WARNING)
        for h in foreign:
            ms_logger.addHandler(h)
        if saved_env is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = saved_env
        if runner is not None:
            runner.pool.shutdown()
        if pool is not None:
            pool.shutdown()
    done = min(budget.trials, trials)
    stopped = budget.expired() and done < trials
    report(done, trials, "stopped: time budget" if stopped else "done")
    return {"trials_run": done, "stopped_early": stopped, "tasks": n_tasks, "max_trials_per_task": cap,
            "setup_s": budget.setup_s}


def _cost_model(trials: int, cores: int) -> Any:
    """XGBoost, trained with early stopping after 15 flat rounds rather than 50 (it converged
    by round ~20 here, and each round costs ~0.1 s of Python on a small machine). Budgets under
    its 100 warm-up samples never consult it, so they get the random model instead of paying
    for training."""
    from tvm.s_tir import meta_schedule as ms

    if trials < XGB_WARMUP:
        return ms.CostModel.create("random", seed=0)
    return ms.CostModel.create("xgb", num_tuning_cores=cores, num_warmup_samples=XGB_WARMUP,
                               early_stopping_rounds=15)


def _budget_builder(pool: Any, budget: _Budget) -> Any:
    """The candidate builder: workers kept for the whole session (TVM's LocalBuilder starts
    fresh ones, each importing TVM, for every batch); reports progress; skips builds once the
    budget is spent and stops tuning (by raising) as soon as every measured batch is saved."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.support.popen_pool import StatusKind

    worker = _make_build_worker()

    @derived_object
    class BudgetBuilder(PyBuilder):
        def build(self, build_inputs: list[Any]) -> list[Any]:
            if budget.setup_s is None:
                budget.setup_s = round(time.time() - budget.start, 1)
            if budget.expired():
                if budget.joined == budget.built:
                    budget.stopped = True
                    raise RuntimeError("edgeship: tuning time budget reached")
                budget.built += 1
                return [BuilderResult(None, "edgeship: tuning time budget reached") for _ in build_inputs]
            results = []
            jobs = [(b.mod, b.target) for b in build_inputs]
            for r in pool.map_with_error_catching(lambda job: worker(*job), jobs):
                if r.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(r.value, None))
                else:
                    results.append(BuilderResult(None, f"edgeship builder: {r.status.name}: {r.value}"))
            budget.built += 1
            if build_inputs:
                budget.trials += len(build_inputs)
                budget.report(min(budget.trials, budget.total), budget.total,
                              f"{time.time() - budget.start:.0f} s")
            return results

    return BudgetBuilder()


def _joined_callback(budget: _Budget) -> Any:
    """Counts batches whose results reached the database (the scheduler joins them late)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Joined(PyMeasureCallback):
        def apply(self, *_args: Any) -> None:
            budget.joined += 1

    return Joined()


# ---------------------------------------------------------------- the export registry entry


def export_artifact(req: Any) -> Any:
    """``export.FORMATS["tvm"]``: an ``ExportRequest`` with the ONNX source -> ``ExportedModel``.

    ``req.cache_dir`` (when given) is the root of the tuning caches; progress goes to
    ``req.log`` one line per tuning batch.
    """
    from edgeship.export import ExportedModel, ExportError

    if req.quantize != "float32":
        raise ExportError(f"TVM exports float32 only (from the float32 ONNX), not {req.quantize}")
    if req.onnx_path is None:
        raise ExportError("the TVM exporter needs the variant's ONNX export as its source")
    progress = None
    if req.log is not None:
        log, last = req.log, [-math.inf]

        def progress(done: int, total: int, status: str) -> None:
            now = time.monotonic()
            if done in (0, total) or now - last[0] >= 15:  # a line per 15 s, not per batch
                last[0] = now
                log(f"tvm tuning: {done}/{total} trials ({status})")

    trials = req.trials or 0
    spec = resolve_target(req.target or "host")
    skipped = None
    if trials and not spec.runs_here:
        # One --trials serves every target of an export (host,rpi4): build the Pi one untuned
        # and say so, rather than failing the whole export after the host one has tuned.
        skipped = f"not tuned: {spec.name} is not this machine and tuning measures on the device"
        if req.log is not None:
            req.log(f"tvm {spec.name}: {skipped}")
        trials = 0
    res = build_tvm(req.onnx_path, req.out_dir, target=req.target or "host", trials=trials,
                    time_budget_s=req.time_budget_s, cache_dir=req.cache_dir, progress=progress)
    tuning = res.tuning if skipped is None else {"trials_requested": req.trials, "note": skipped}
    target = res.target.to_dict()
    checks = {f"elf machine is {_ELF_NAMES.get(res.target.arch, res.target.arch)}":
              res.elf_machine == ELF_MACHINES.get(res.target.arch)}
    return ExportedModel(
        file=res.file, runtime=res.runtime, inputs=res.inputs, outputs=res.outputs, target=target,
        extra={"tuning": tuning,
               "tvm": {"elf_machine": res.elf_machine, "untuned_ms": res.untuned_ms,
                       "tuned_ms": res.tuned_ms, "wall_s": res.wall_s,
                       "static_batch": 1}},
        runnable_here=res.runs_here, checks=checks,
    )


_ELF_NAMES = {"x86_64": "x86-64", "aarch64": "AArch64"}


if __name__ == "__main__":
    import sys

    sys.exit(_child_main(sys.argv[1:]))
