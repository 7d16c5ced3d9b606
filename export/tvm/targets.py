"""TVM targets: a target name or JSON object -> the ``TargetSpec`` a build is made for.

Kept apart from the build so the rules for what edgeship can build (an ``llvm`` CPU target for
this machine's arch, or aarch64 linked by the Debian cross compiler) and what this machine can
run, time and tune (same arch, no foreign ``mcpu``) read in one place.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from edgeship.core.errors import InputError
from edgeship.core.names import host_arch

TARGET_NAMES = ("host", "rpi4", "rpi5")
CROSS_COMPILERS = {"aarch64": ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu")}
_PI = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 4}
PI_TARGETS = {
    "rpi4": {**_PI, "mcpu": "cortex-a72"},
    "rpi5": {**_PI, "mcpu": "cortex-a76"},
}


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


@functools.cache
def host_cpu() -> str:
    """This CPU's LLVM name (e.g. skylake-avx512, cortex-a72)."""
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def _arch_of(triple: str) -> str:
    head = triple.split("-")[0].lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(head, head)


def runtime_threads() -> int:
    """Threads TVM's runtime uses here by default ($TVM_NUM_THREADS, else its own guess)."""
    import tvm_ffi

    return int(tvm_ffi.get_global_func("runtime.NumThreads")())


def resolve_target(target: str | dict[str, Any], num_threads: int | None = None) -> TargetSpec:
    """A target name or JSON object -> ``TargetSpec``, or a one-line ``InputError``.

    ``host`` names this CPU (``mcpu`` from LLVM: tuning needs it to use AVX2/AVX-512) with
    ``num-cores`` = ``num_threads`` or the TVM runtime's default thread count here, so tuning
    measures what the artifact will run with.
    """
    if num_threads is not None and num_threads < 1:
        raise InputError(f"num_threads must be 1 or more, got {num_threads}")
    cfg, name = _target_config(target, num_threads)
    return _checked_spec(cfg, name)


def check_target_text(text: str) -> None:
    """Refuse an unknown target name at once: the CLI checks before any export work starts."""
    text = text.strip()
    if text not in TARGET_NAMES and not text.startswith(("{", "[")):
        raise InputError(f"unknown TVM target '{text}'; choose {', '.join(TARGET_NAMES)} or a "
                         'JSON object such as {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}')


def _target_config(target: str | dict[str, Any], num_threads: int | None) -> tuple[dict[str, Any], str]:
    """The TVM target dict a name, JSON text or dict stands for, and the target's name."""
    if isinstance(target, dict):
        return dict(target), "custom"
    if not isinstance(target, str):
        raise InputError(f"a TVM target is a name or a JSON object, not {type(target).__name__}")
    text = target.strip()
    if text == "host":
        return {"kind": "llvm", "mcpu": host_cpu(), "num-cores": num_threads or runtime_threads()}, "host"
    if text in PI_TARGETS:
        return dict(PI_TARGETS[text]), text
    check_target_text(text)
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"the TVM target is not valid JSON ({e.msg} at column {e.colno}); "
                         'e.g. {"kind": "llvm", "mcpu": "cortex-a72"}') from None
    return cfg, "custom"


def _checked_spec(cfg: Any, name: str) -> TargetSpec:
    """``cfg`` checked with TVM and LLVM (kind, triple, mcpu) -> ``TargetSpec``."""
    import tvm
    from tvm.target import codegen

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
