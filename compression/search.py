"""Search under an accuracy budget: the smallest (or fastest) variant that stays within it.

Every try is scored on the validation split only; the winner is then confirmed on the test
split, once. All tries are recorded, with a Pareto plot of size against accuracy.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edgeship.compression.measure import tflite_bytes, tflite_latency_ms
from edgeship.compression.prune import SparsityNotReachedError
from edgeship.compression.recipes import search_space
from edgeship.compression.stage import (
    BuiltVariant,
    VariantResult,
    build_variant,
    check_name_free,
    load_run_data,
    retire_artifacts,
    variant_result,
    write_variant,
)
from edgeship.core.console import info
from edgeship.core.errors import InputError
from edgeship.core.runstore import RunDir
from edgeship.training.keras_env import load_model

OBJECTIVES = ("size", "latency")


@dataclass(frozen=True)
class SearchConfig:
    accuracy_budget: float = 1.0  # percentage points of validation accuracy
    objective: str = "size"
    time_budget_s: float | None = 600.0
    epochs: int = 4
    distill_epochs: int = 20
    seed: int = 0
    # None: each try's own default (``CompressConfig``); else every try fine-tunes with it.
    learning_rate: float | None = None
    batch_size: int | None = None
    temperature: float | None = None
    alpha: float | None = None
    low_rank_energy: float | None = None
    name: str | None = None  # the kept variant's name (default: search-<recipe>)
    force: bool = False  # replace a variant of that name (its exports and bench results go)

    def tuning(self) -> dict[str, Any]:
        """What every try runs with: epochs, seed and the options given."""
        extra = {k: getattr(self, k) for k in ("learning_rate", "batch_size", "temperature", "alpha",
                                               "low_rank_energy") if getattr(self, k) is not None}
        return {"epochs": self.epochs, "distill_epochs": self.distill_epochs, "seed": self.seed, **extra}

    def check(self) -> None:
        if self.accuracy_budget < 0:
            raise InputError(f"--accuracy-budget {self.accuracy_budget}: use a non-negative number of "
                             "points, e.g. 1.0")
        if self.objective not in OBJECTIVES:
            raise InputError(f"--objective {self.objective}: use one of {', '.join(OBJECTIVES)}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise InputError("--time-budget must be positive, e.g. 10m")
        for c in search_space():
            replace(c, **self.tuning(), name=self.name).check()


@dataclass
class SearchResult:
    best: VariantResult | None
    tries: list[dict[str, Any]]
    reference_val_accuracy: float


def search(run: RunDir, cfg: SearchConfig, progress: Any = None) -> SearchResult:
    cfg.check()
    start = run.begin()  # --no-wait fails here, not after the tries; the wall time counts them
    data = load_run_data(run)
    ref_val = _base_val_accuracy(run, data)
    floor = ref_val - cfg.accuracy_budget / 100
    space = [replace(c, **cfg.tuning()) for c in search_space()]
    for name in [cfg.name] if cfg.name else [f"search-{c.default_name()}" for c in space]:
        check_name_free(run, name, cfg.force)  # before the tries, not after them
    started = time.monotonic()
    tries: list[dict[str, Any]] = []
    best: tuple[float, BuiltVariant] | None = None
    x_one = data.arrays["x_val"][0]
    for i, candidate in enumerate(space):
        name = f"search-{candidate.default_name()}"
        if cfg.time_budget_s is not None and time.monotonic() - started > cfg.time_budget_s:
            tries.append({"name": name, "status": "skipped (time budget)"})
            continue
        t0 = time.monotonic()
        try:
            built = build_variant(run, data, replace(candidate, name=name))
        except SparsityNotReachedError as e:
            tries.append({"name": name, "status": f"failed: {e}"})
            info(f"try {i + 1}/{len(space)} {name}: {e}")
            continue
        m = built.metrics
        row = {
            "name": name,
            "recipe": candidate.default_name(),
            "val_accuracy": m["val_accuracy"],
            "val_drop_points": round((ref_val - m["val_accuracy"]) * 100, 3),
            "tflite_bytes": m["tflite_bytes"],
            "tflite_gzip_bytes": m["tflite_gzip_bytes"],
            "params": m["params"],
            "seconds": round(time.monotonic() - t0, 1),
        }
        if cfg.objective == "latency":
            row["latency_ms"] = tflite_latency_ms(_deployable_bytes(built), x_one)
        row["within_budget"] = m["val_accuracy"] >= floor - 1e-12
        row["status"] = "ok"
        tries.append(row)
        score = row["latency_ms"] if cfg.objective == "latency" else row["tflite_gzip_bytes"]
        if row["within_budget"] and (best is None or score < best[0]):
            best = (score, built)
        if progress is not None:
            progress.update(1, status=f"{name}: val {m['val_accuracy']:.3f}, {m['tflite_gzip_bytes']:,} B gz")
        info(f"try {i + 1}/{len(space)} {name}: val acc {m['val_accuracy']:.4f}, "
             f"{m['tflite_gzip_bytes']:,} gzip bytes" + ("  (within budget)" if row["within_budget"] else ""))
    params = {**asdict(cfg), "reference_val_accuracy": ref_val, "tuning": cfg.tuning()}
    replacing = False
    with run.writing():
        if best is not None:
            if cfg.name:
                _rename(best[1], cfg.name)
            replacing = check_name_free(run, best[1].name, cfg.force)
        with run.stage("search", params, start=start) as st:
            out = st.output_dir("search")
            _write_tables(out, tries, ref_val, cfg, best[1].name if best else None)
            plot_pareto(out / "pareto.png", tries, ref_val, cfg.accuracy_budget,
                        best[1].name if best else None)
            if best is not None:
                best[1].record["search"] = {"objective": cfg.objective, "budget_points": cfg.accuracy_budget}
                write_variant(st, run, best[1], replacing=replacing)
            st.metrics.update({"tries": len(tries), "best": best[1].name if best else None})
        if replacing and best is not None:
            retire_artifacts(run, best[1].name)
    return SearchResult(variant_result(run, best[1]) if best else None, tries, ref_val)


def _rename(built: BuiltVariant, name: str) -> None:
    """Keep the winning try under ``--name`` (its record says which try it was)."""
    built.record["search_try"] = built.name
    built.name = built.record["name"] = name
    built.record["dir"] = f"variants/{name}"


def _base_val_accuracy(run: RunDir, data: Any) -> float:
    from edgeship.compression.measure import tflite_predict
    from edgeship.training.evaluation import accuracy

    model = load_model(run.model_path("base"))
    return accuracy(tflite_predict(tflite_bytes(model, "float32"), data.arrays["x_val"]),
                    data.arrays["y_val"])


def _deployable_bytes(built: BuiltVariant) -> bytes:
    """The TFLite form the variant was measured as, calibrated on the rows it was measured with."""
    mode = "qat" if built.record["qat"] else built.metrics["deploy_form"]
    rows = built.calibration.rows if built.calibration is not None else None
    return tflite_bytes(built.model, mode, rows)


def _write_tables(out: Path, tries: list[dict[str, Any]], ref_val: float, cfg: SearchConfig,
                  best: str | None) -> None:
    (out / "tries.json").write_text(json.dumps({"reference_val_accuracy": ref_val, "best": best,
                                                "config": asdict(cfg), "tries": tries}, indent=2) + "\n")
    keys = sorted({k for t in tries for k in t}, key=lambda k: list(tries[0]).index(k)
                  if k in tries[0] else 99)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(tries)
    (out / "tries.csv").write_text(buf.getvalue())


def plot_pareto(path: Path, tries: list[dict[str, Any]], ref_val: float, budget: float,
                best: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in tries if t.get("status") == "ok"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for t in done:
        colour = "#2f855a" if t["within_budget"] else "#a0aec0"
        chosen = t["name"] == best
        ax.scatter(t["tflite_gzip_bytes"] / 1024, t["val_accuracy"], c=colour, s=60 if chosen else 30,
                   edgecolors="black" if chosen else "none", zorder=3)
        ax.annotate(t["recipe"], (t["tflite_gzip_bytes"] / 1024, t["val_accuracy"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    frontier = _pareto_front(done)
    if frontier:
        ax.plot([t["tflite_gzip_bytes"] / 1024 for t in frontier], [t["val_accuracy"] for t in frontier],
                color="#2b6cb0", lw=1, ls="--", label="Pareto front")
    ax.axhline(ref_val, color="#dd6b20", lw=1, label=f"float32 reference ({ref_val:.3f})")
    ax.axhline(ref_val - budget / 100, color="#c53030", lw=1, ls=":", label=f"budget (-{budget} pt)")
    ax.set_xlabel("TFLite size, gzip (KiB)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("compression search: size against accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pareto_front(tries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tries no other try beats on both size and accuracy, by size."""
    front = []
    for t in sorted(tries, key=lambda t: (t["tflite_gzip_bytes"], -t["val_accuracy"])):
        if not front or t["val_accuracy"] > front[-1]["val_accuracy"]:
            front.append(t)
    return front



