"""What every benchmark driver shares: choosing artifacts, thread counts and counts, progress.

The registry of drivers (which device name runs which driver) is ``edgeship.devices.registry``, on the
top floor, since the Pi's driver lives above this layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeship.core.errors import InputError, RunError
from edgeship.core.names import host_arch, split_names
from edgeship.core.runstore import RunDir

HOST_FORMATS = ("tflite", "onnx", "tvm")


def parse_threads(value: str | Sequence[int] | int) -> tuple[int, ...]:
    """'1,2' / [1, 2] / 1 -> (1, 2), each a positive integer."""
    if isinstance(value, int):
        items: list[Any] = [value]
    elif isinstance(value, str):
        items = [p.strip() for p in value.split(",") if p.strip()]
    else:
        items = list(value)
    out: list[int] = []
    for item in items:
        try:
            n = int(item)
        except (TypeError, ValueError):
            raise InputError(f"threads '{item}' is not a number; use e.g. --threads 1,2") from None
        if n < 1:
            raise InputError(f"threads must be 1 or more, got {n}")
        if n not in out:
            out.append(n)
    if not out:
        raise InputError("no thread counts given; use e.g. --threads 1,2")
    return tuple(out)


def check_counts(runs: int, warmup: int, rounds: int = 1) -> None:
    """Refuse before anything loads: ``--runs 0`` would give a result without a latency."""
    if rounds < 1:
        raise InputError(f"--rounds must be at least 1, got {rounds}")
    if runs < 1:
        raise InputError(f"--runs must be at least 1, got {runs}")
    if warmup < 0:
        raise InputError(f"--warmup must be 0 or more, got {warmup}")


@dataclass(frozen=True)
class BenchSettings:
    """What to measure and how often, the same on every device: parsed and checked once, where it
    is made (the CLI from its flags, the pipeline from its config); drivers take it as it is.

    The defaults are the CLI's: five rounds give a p50 interval at 93.75 % (``edge_runtime.stats``).
    """

    variants: str = "all"  # a name, a comma list or "all"
    formats: str = "all"  # a format, an export folder (tflite-int8), a comma list or "all"
    threads: tuple[int, ...] = (1, 2)
    rounds: int = 5
    runs: int = 200
    warmup: int = 20

    def __post_init__(self) -> None:
        check_counts(self.runs, self.warmup, self.rounds)
        if parse_threads(self.threads) != self.threads:
            raise InputError(f"threads {self.threads}: give distinct positive counts, e.g. (1, 2)")

    @classmethod
    def parse(cls, threads: str | Sequence[int] | int = "1,2", **counts: Any) -> BenchSettings:
        """From the CLI's text (``--threads 1,2``); the counts are checked as given."""
        return cls(threads=parse_threads(threads), **counts)

    def plan_size(self, artifacts: int, per_artifact: int = 1) -> int:
        """Measurements for ``artifacts`` (each measured ``per_artifact`` ways): a progress bar's total."""
        return artifacts * per_artifact * len(self.threads) * self.rounds


@dataclass(frozen=True)
class Artifact:
    """One export that can be benchmarked: its folder and artifact.json."""

    dir: Path
    rel: str  # relative to the run: exports/<variant>/<name>
    variant: str
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def format(self) -> str:
        return str(self.meta.get("format"))


def select_artifacts(
    run: RunDir,
    variants: str | Sequence[str] = "all",
    formats: str | Sequence[str] = "all",
    *,
    runnable_here: bool = True,
    allowed_formats: Sequence[str] = HOST_FORMATS,
    log: Callable[[str], None] | None = None,
) -> list[Artifact]:
    """Passing exports of a run matching ``variants`` and ``formats``.

    ``formats`` entries match a format (``tflite``) or an artifact folder (``tflite-int8``).
    Failed exports (``*.failed/``) never count; with ``runnable_here`` builds for another CPU
    architecture (aarch64 TVM libraries on x86) are skipped and noted through ``log``.
    """
    from edgeship.export.stage import list_artifacts

    say = log or (lambda _m: None)
    all_metas = list_artifacts(run, include_failed=True)
    if not all_metas:
        raise RunError(f"run {run.id} has no exports; make them with `edgeship export {run.id}`")
    known_variants = sorted({str(m.get("variant") or Path(m["dir"]).parent.name) for m in all_metas})
    want_v = split_names(variants) or ["all"]
    if "all" not in want_v:
        unknown = [v for v in want_v if v not in known_variants]
        if unknown:
            raise InputError(f"no exports of variant '{unknown[0]}' in run {run.id}; "
                             f"exported variants: {', '.join(known_variants)} (or all)")
    want_f = split_names(formats) or ["all"]
    out: list[Artifact] = []
    matched_formats: set[str] = set()
    for meta in all_metas:
        folder = run.path / meta["dir"]
        variant = str(meta.get("variant") or folder.parent.name)
        if "all" not in want_v and variant not in want_v:
            continue
        name = folder.name.removesuffix(".failed")
        fmt = str(meta.get("format"))
        hits = [f for f in want_f if f in ("all", fmt, name)]
        if not hits:
            continue
        matched_formats.update(hits)
        if meta.get("failed"):
            say(f"skipping {meta['dir']}: it failed export validation")
            continue
        if fmt not in allowed_formats:
            if "all" not in hits:
                say(f"skipping {meta['dir']}: format {fmt} is not measured here")
            continue
        arch = (meta.get("target") or {}).get("arch")
        if runnable_here and arch not in (None, "any", host_arch()):
            say(f"skipping {meta['dir']}: built for {arch}, this machine is {host_arch()} "
                "(benchmark it with --on pi)")
            continue
        out.append(Artifact(dir=folder, rel=meta["dir"], variant=variant, meta=meta))
    unmatched = [f for f in want_f if f != "all" and f not in matched_formats]
    if unmatched:
        names = sorted({Path(m["dir"]).name.removesuffix(".failed") for m in all_metas})
        raise InputError(f"no export matches --format {unmatched[0]}; this run has "
                         f"{', '.join(names)} (a format, a folder name, or all)")
    if not out:
        raise RunError(f"run {run.id} has no passing export to benchmark here "
                       f"(variants {', '.join(want_v)}, formats {', '.join(want_f)})")
    return out
