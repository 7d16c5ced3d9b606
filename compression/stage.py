"""The compression stage: a model of a run in, a measured variant out.

Passes run in a fixed order whatever the flag order: distill and low-rank change the
architecture, prune and cluster change the weights of that architecture, and quantization
comes last so it sees the final weights (and preserves sparsity and clusters, PQAT/CQAT).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.compression.base import PassContext
from edgeship.compression.cluster import ClusterConfig, cluster
from edgeship.compression.distill import DistillConfig, distill
from edgeship.compression.lowrank import LowRankConfig, low_rank
from edgeship.compression.measure import measure_variant
from edgeship.compression.prune import PruneConfig, check_sparsity, prune, sparsity_reached
from edgeship.compression.quantize import QuantizeConfig, quantize_aware
from edgeship.core.console import info, warn
from edgeship.core.errors import InputError, RunError
from edgeship.core.fsutil import make_temp_dir, read_json
from edgeship.core.runstore import STAGE_PREFIX, RunDir
from edgeship.training.calibration import Calibration, calibration_set
from edgeship.training.keras_env import load_model, seed_everything
from edgeship.training.splits import balanced_class_weight


@dataclass(frozen=True)
class CompressConfig:
    """One variant: which passes, with what settings, from which source model."""

    prune: float | None = None
    prune_structure: str | None = None
    cluster: int | None = None
    quantize: str | None = None
    distill: bool = False
    student: str | None = None
    student_width: float = 0.25
    temperature: float = 4.0
    alpha: float = 0.1
    distill_epochs: int = 30
    low_rank: str | None = None
    low_rank_energy: float = 0.9
    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 5e-4
    seed: int = 0
    source: str = "base"
    name: str | None = None

    def check(self) -> None:
        if not (self.prune is not None or self.prune_structure or self.cluster is not None
                or self.quantize or self.distill or self.low_rank):
            raise InputError("no compression pass given: use --prune, --cluster, --quantize, --distill, "
                             "--low-rank, --recipe default or --search")
        if self.prune is not None:
            PruneConfig(self.prune).check()
        if self.prune_structure:
            PruneConfig(structure=self.prune_structure).check()
        if self.cluster is not None:
            ClusterConfig(self.cluster).check()
        if self.quantize:
            QuantizeConfig(self.quantize).check()
        if self.distill:
            self.distill_config().check()
        if self.low_rank:
            LowRankConfig.parse(self.low_rank, self.low_rank_energy).check()
        if self.epochs < 1:
            raise InputError(f"--epochs {self.epochs}: fine-tune for at least 1 epoch")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", self.name):
            raise InputError(f"--name {self.name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        if self.name == "base":
            raise InputError("--name base is the trained model's name; pick another")

    def distill_config(self) -> DistillConfig:
        return DistillConfig(student=self.student, student_width=self.student_width,
                             temperature=self.temperature, alpha=self.alpha, epochs=self.distill_epochs)

    def default_name(self) -> str:
        parts = []
        if self.distill:
            parts.append(f"distill-{self.student}" if self.student else
                         f"distill{round(self.student_width * 100)}")
        if self.low_rank:
            parts.append(f"lowrank{self.low_rank}")
        if self.prune_structure:
            parts.append("prune" + self.prune_structure.replace(":", "of"))
        elif self.prune is not None:
            parts.append(f"prune{round(self.prune * 100)}")
        if self.cluster is not None:
            parts.append(f"cluster{self.cluster}")
        if self.quantize:
            parts.append(self.quantize)
        return "-".join(parts)

    def pass_count(self) -> int:
        """Fine-tuning epochs all passes will run: the length of the progress bar."""
        n = 2 * self.distill_epochs if self.distill else 0  # the student and its scratch twin
        n += sum(self.epochs for on in (self.low_rank, self.prune is not None or self.prune_structure,
                                        self.cluster is not None, self.quantize == "qat") if on)
        return n


@dataclass
class VariantResult:
    name: str
    dir: Path
    metrics: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunData:
    """What a compression pass reads from a run."""

    arrays: dict[str, np.ndarray]
    labels: list[str]
    model_name: str
    model_options: dict[str, Any]
    class_weight: dict[int, float] | None


def load_run_data(run: RunDir) -> RunData:
    manifest = run.manifest
    if "model" not in manifest or not (run.path / "model/model.keras").is_file():
        raise RunError(f"run {run.id} has no trained model; make one with `edgeship train`")
    with np.load(run.path / "data/splits.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    labels = manifest["data"]["labels"]
    weight = (balanced_class_weight(arrays["y_train"], len(labels))
              if manifest["data"].get("class_weight") == "balanced" else None)
    return RunData(arrays, labels, manifest["model"]["name"], manifest["model"].get("options", {}),
                   weight)


def variant_accuracy(run: RunDir, variant: str) -> float:
    if variant == "base":
        made = run.last_stage("train") or run.last_stage("import")
        return float(made["metrics"]["test_accuracy"])
    return float(run.manifest["variants"][variant]["test_accuracy"])


LOSS_WARNING_POINTS = 5.0  # a compressed variant this far below its parent is not a trade a user means


def accuracy_loss_warning(name: str, parent: str, parent_acc: float, acc: float, rows: int,
                          remedy: str) -> str | None:
    """One line when compression cost more than ``LOSS_WARNING_POINTS`` and two test rows.

    Validation later judges each export against this variant, not against its parent: a pruned
    model that collapsed exports "correctly" and only the report's accuracy budget keeps it from
    shipping. Saying so here puts the cause where the user can act on it.
    """
    lost = (parent_acc - acc) * 100
    if lost <= max(LOSS_WARNING_POINTS, 200 / max(rows, 1)):
        return None
    return (f"{name} is {lost:.1f} points below {parent} on the test split ({parent_acc:.3f} -> {acc:.3f}): "
            f"{remedy}")


def loss_remedy(cfg: CompressConfig, passes: list[str]) -> str:
    """The flag that buys the accuracy back, for the passes that lost it."""
    if "distill" in passes:
        return f"train the student longer (--distill-epochs, {cfg.distill_epochs} now) or make it larger"
    if set(passes) <= {"ptq-int8", "ptq-float16"}:
        return "try --quantize qat (int8 ranges learned in training)"
    return f"fine-tune longer (--epochs, {cfg.epochs} now) or compress less"


@dataclass
class BuiltVariant:
    """A compressed model in memory with its measurements, not yet part of the run."""

    name: str
    model: Any
    metrics: dict[str, Any]
    record: dict[str, Any]
    calibration: Calibration | None = None  # the int8 calibration rows, None if not int8 PTQ


def compress_run(run: RunDir, cfg: CompressConfig, progress: Any = None, *,
                 force: bool = False) -> VariantResult:
    """Apply the configured passes to a model of ``run`` and commit the measured variant.

    A variant of the same name is replaced only with ``force``; its exports and benchmark
    results, made from the model that is replaced, are removed under the run's lock.
    """
    cfg.check()
    check_name_free(run, cfg.name or cfg.default_name(), force)  # before the slow part
    start = run.begin()  # --no-wait fails here, not after the work; the wall time counts it
    built = build_variant(run, load_run_data(run), cfg, progress)
    with run.writing():
        replacing = check_name_free(run, built.name, force)  # again: another writer may have made it
        with run.stage("compress", {**asdict(cfg), "name": built.name, "force": force},
                       start=start) as st:
            write_variant(st, run, built, replacing=replacing)
        if replacing:
            retire_artifacts(run, built.name)
    return variant_result(run, built)


def check_name_free(run: RunDir, name: str, force: bool) -> bool:
    """Whether ``name`` is an existing variant (one ``force`` replaces), else a one-line error."""
    taken = name in (run.manifest.get("variants") or {}) or (run.path / "variants" / name).exists()
    if taken and not force:
        raise InputError(f"run {run.id} already has a variant '{name}'; pass --force to replace it (its "
                         "exports and benchmark results go with it) or --name to keep both")
    return taken


def retire_artifacts(run: RunDir, name: str) -> list[str]:
    """Remove the exports and benchmark results of variant ``name``: made from a model it no longer has.

    Under the run's lock, after the compress stage committed (so a failed compress keeps them);
    each goes by one rename into a ``.stage-*`` folder first, which the next writer clears if this
    process is killed, so ``exports/`` never holds half a folder. A kill between the commit and
    this leaves them in place: readers compare each artifact's source sha256 with the variant's
    model (``export.listing``) and refuse or flag what no longer matches.
    """
    removed: list[str] = []
    with run.writing():
        trash = make_temp_dir(f"{STAGE_PREFIX}retired-", run.path)
        try:
            folder = run.path / "exports" / name
            if folder.exists():
                os.replace(folder, trash / "exports")
                removed.append(f"exports/{name}")
            for path in sorted((run.path / "bench").glob("*.json")):
                try:
                    variant = read_json(path).get("variant")
                except (OSError, ValueError, AttributeError):
                    continue
                if variant == name:
                    os.replace(path, trash / path.name)
                    removed.append(f"bench/{path.name}")
        finally:
            shutil.rmtree(trash, ignore_errors=True)
    children = [v for v, e in (run.manifest.get("variants") or {}).items() if (e or {}).get("parent") == name]
    if removed:
        info(f"removed {len(removed)} exports and benchmark results of the replaced variant {name}")
    if children:
        warn(f"variants {', '.join(children)} were compressed from the replaced {name}: their parent's "
             "model is not the one they came from")
    return removed


def build_variant(run: RunDir, data: RunData, cfg: CompressConfig, progress: Any = None) -> BuiltVariant:
    source = load_model(run.model_path(cfg.source))
    name = cfg.name or cfg.default_name()
    a = data.arrays
    ctx = PassContext(
        x_train=a["x_train"], y_train=a["y_train"], x_val=a["x_val"], y_val=a["y_val"],
        labels=data.labels, model_name=data.model_name, model_options=data.model_options,
        epochs=cfg.epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, seed=cfg.seed,
        class_weight=data.class_weight, progress=progress,
    )
    if cfg.source != "base":
        ctx.applied.extend(run.manifest["variants"][cfg.source].get("applied", []))
    seed_everything(cfg.seed)
    model, passes = apply_passes(source, ctx, cfg)
    deploy = ctx.notes.get("post_training_quantization", "float32")
    if {"qat", "pqat", "cqat"} & set(passes):
        deploy = "qat"
    calibration = run_calibration(run, data) if deploy == "int8" else None
    splits = (calibration, a["x_val"], a["y_val"], a["x_test"], a["y_test"])
    metrics = measure_variant(model, deploy, *splits)
    if "scratch" in ctx.side_models:
        scratch = measure_variant(ctx.side_models["scratch"], deploy if deploy != "qat" else "float32",
                                  *splits)
        ctx.notes["distillation"].update(
            scratch_test_accuracy=scratch["test_accuracy"],
            scratch_keras_test_accuracy=scratch["keras_test_accuracy"],
            gain_over_scratch=metrics["test_accuracy"] - scratch["test_accuracy"],
        )
    reached = _check_final_sparsity(model, ctx, cfg, passes)
    parent_acc = variant_accuracy(run, cfg.source)
    base_acc = variant_accuracy(run, "base")
    metrics.update({
        "accuracy_delta": metrics["test_accuracy"] - parent_acc,
        "accuracy_delta_vs_base": metrics["test_accuracy"] - base_acc,
        "parent_test_accuracy": parent_acc,
        "base_test_accuracy": base_acc,
        "passes": passes,
        "notes": ctx.notes,
        "sparsity_reached": reached,
    })
    loss = accuracy_loss_warning(name, cfg.source, parent_acc, metrics["test_accuracy"], len(a["y_test"]),
                                 loss_remedy(cfg, passes))
    if loss:
        warn(loss)
        ctx.notes["accuracy_warning"] = loss
    record = {
        "name": name, "parent": cfg.source, "passes": passes, "applied": ctx.applied,
        "quantize": metrics["deploy_form"], "qat": deploy == "qat",
        "calibration": metrics["calibration"],
        "config": {k: v for k, v in asdict(cfg).items() if v not in (None, False)},
        "dir": f"variants/{name}",
        "sparsity_reached": reached,
        # QAT models do not round-trip the native Keras format (tfmot's quantize layers lose
        # variables on load); HDF5 keeps them.
        "model_file": "model.h5" if deploy == "qat" else "model.keras",
    }
    return BuiltVariant(name, model, metrics, record, calibration)


def _check_final_sparsity(model: Any, ctx: PassContext, cfg: CompressConfig,
                          passes: list[str]) -> dict[str, Any] | None:
    """The sparsity the finished variant has (per kernel layer and overall), or None without
    pruning; a one-line error when later passes (QAT, clustering) lost what pruning reached."""
    if cfg.prune is None and not cfg.prune_structure:
        return None
    pcfg = PruneConfig(sparsity=cfg.prune if cfg.prune is not None else 0.5, structure=cfg.prune_structure)
    reached = {"requested": pcfg.structure or pcfg.sparsity,
               **sparsity_reached(model, ctx.notes.get("pruned_layers"))}
    check_sparsity(pcfg, reached, ctx.notes.get("prune_skipped_layers") or [], what=" + ".join(passes))
    return reached


def run_calibration(run: RunDir, data: RunData) -> Calibration:
    """The int8 calibration rows of ``run``: seeded with the run's seed (not ``--seed``), so
    they are the rows ``edgeship export`` calibrates the exported int8 artifacts on."""
    a = data.arrays
    return calibration_set(a["x_train"], a.get("y_train"), seed=int(run.manifest.get("seed", 0)),
                           fix="use --quantize qat, float16 or dynamic instead")


def write_variant(st: Any, run: RunDir, built: BuiltVariant, replacing: bool = False) -> None:
    """Stage a variant's files and its manifest entry (committed with the stage); ``replacing``
    drops the replaced variant's exports from the manifest (``retire_artifacts`` removes them)."""
    out = st.output_dir(f"variants/{built.name}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # HDF5 is deliberate for QAT: see model_file
        built.model.save(out / built.record["model_file"])
    (out / "metrics.json").write_text(json.dumps(built.metrics, indent=2, default=float) + "\n")
    (out / "variant.json").write_text(json.dumps(built.record, indent=2) + "\n")
    variants = dict(st.sections.get("variants") or run.manifest.get("variants", {}))
    variants[built.name] = {**built.record, **_headline(built.metrics)}
    st.set_section("variants", variants)
    st.metrics.setdefault("variants", {})[built.name] = _headline(built.metrics)
    if replacing:
        exports = dict(st.sections.get("exports") or run.manifest.get("exports") or {})
        st.set_section("exports", {k: v for k, v in exports.items()
                                   if not k.startswith(f"exports/{built.name}/")})


def variant_result(run: RunDir, built: BuiltVariant) -> VariantResult:
    path = run.path / "variants" / built.name
    return VariantResult(name=built.name, dir=path, metrics=built.metrics,
                         summary={"name": built.name, "dir": str(path), **_headline(built.metrics)})


def apply_passes(model: Any, ctx: PassContext, cfg: CompressConfig) -> tuple[Any, list[str]]:
    if cfg.distill:
        model = distill(model, ctx, cfg.distill_config())
    if cfg.low_rank:
        model = low_rank(model, ctx, LowRankConfig.parse(cfg.low_rank, cfg.low_rank_energy))
    if cfg.prune is not None or cfg.prune_structure:
        model = prune(model, ctx, PruneConfig(sparsity=cfg.prune if cfg.prune is not None else 0.5,
                                              structure=cfg.prune_structure))
    if cfg.cluster is not None:
        model = cluster(model, ctx, ClusterConfig(cfg.cluster))
    if cfg.quantize:
        model = quantize_aware(model, ctx, QuantizeConfig(cfg.quantize))
        if cfg.quantize != "qat":
            ctx.applied.append(f"ptq-{cfg.quantize}")
    return model, list(ctx.applied)


def _headline(m: dict[str, Any]) -> dict[str, Any]:
    """The fields `compress --json`, `show` and the manifest carry for each variant."""
    return {
        "test_accuracy": m["test_accuracy"],
        "accuracy_delta": m["accuracy_delta"],
        "accuracy_delta_vs_base": m["accuracy_delta_vs_base"],
        "sparsity": m["sparsity"],  # over every kernel, depthwise ones included
        # over the kernels pruning acts on (what --prune asked for); None without pruning
        "pruned_sparsity": (m.get("sparsity_reached") or {}).get("overall"),
        "params": m["params"],
        "nonzero_params": m["nonzero_params"],
        "tflite_bytes": m["tflite_bytes"],
        "tflite_gzip_bytes": m["tflite_gzip_bytes"],
        "deploy_form": m["deploy_form"],
    }
