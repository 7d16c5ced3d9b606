"""``edgeship train --from RUN --add-feedback LOGDIR``: retrain on the old train split plus the
logged requests that came back with a true label.

Only requests logged with ``--log-inputs raw`` carry the inputs a model can learn from; a log
folder with feedback but no raw inputs is a one-line error naming the mode needed. The old
run's training settings are reused as they were (same dataset, seed and split, so the same
validation and test rows: the new model is comparable with the old one; with a time column the
split stays the time split, and the logged rows, being newer than any of it, join the train
split only). The preprocessing is refitted on the same train rows, so it equals the old run's;
logged rows are transformed with it. The new run records its lineage: the old run and every
log file used, with its sha256.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgeship.core.console import warn
from edgeship.core.errors import DataError, InputError, RunError
from edgeship.core.runstore import RunStore
from edgeship.training import preprocessing
from edgeship.training.card import model_card

REQUESTS_GLOB = "requests-*.jsonl"
FEEDBACK_GLOB = "feedback-*.jsonl"


@dataclass
class FeedbackRows:
    """Logged inputs with their true labels, and where they came from."""

    inputs: list[Any]  # raw rows ({column: value}) or raw images (H x W x C lists)
    labels: list[str]
    files: list[dict[str, Any]]
    skipped: dict[str, int]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    good, bad = [], 0
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                bad += 1
                continue
            if isinstance(obj, dict) and isinstance(obj.get("request_id"), str):
                good.append(obj)
            else:
                bad += 1
    return good, bad


def read_feedback_rows(folder: Path) -> FeedbackRows:
    """Logged raw inputs joined with their feedback labels, or a one-line error saying what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--add-feedback {folder}: no such folder; pass the request-log folder of a "
                         "serving device (requests-*.jsonl and feedback-*.jsonl)")
    request_files = sorted(folder.glob(REQUESTS_GLOB))
    feedback_files = sorted(folder.glob(FEEDBACK_GLOB))
    if not request_files:
        raise InputError(f"--add-feedback {folder}: no request logs ({REQUESTS_GLOB}) in it")
    if not feedback_files:
        raise InputError(f"--add-feedback {folder}: no feedback ({FEEDBACK_GLOB}); post true labels to "
                         "the server's :feedback endpoint first")
    files: list[dict[str, Any]] = []
    skipped = {"corrupt_lines": 0, "not_raw": 0, "unlabelled": 0}
    labels: dict[tuple[str, int | None], str] = {}
    for path in feedback_files:
        lines, bad = _lines(path)
        skipped["corrupt_lines"] += bad
        for ln in lines:
            if ln.get("label") is not None:
                inst = ln.get("instance")
                labels[(ln["request_id"], inst if isinstance(inst, int) else None)] = str(ln["label"])
        files.append({"path": path.name, "sha256": _sha256(path), "lines": len(lines)})
    inputs, ys = [], []
    modes: set[str] = set()
    for path in request_files:
        lines, bad = _lines(path)
        skipped["corrupt_lines"] += bad
        used = 0
        for ln in lines:
            label = labels.get((ln["request_id"], ln.get("instance"))) or labels.get((ln["request_id"], None))
            if label is None:
                skipped["unlabelled"] += 1
                continue
            inp = ln.get("input") if isinstance(ln.get("input"), dict) else {}
            modes.add(str(inp.get("mode")))
            if inp.get("mode") != "raw" or inp.get("values") is None:
                skipped["not_raw"] += 1
                continue
            inputs.append(inp["values"])
            ys.append(label)
            used += 1
        files.append({"path": path.name, "sha256": _sha256(path), "lines": len(lines), "used": used})
    if not inputs:
        if skipped["not_raw"]:
            shown = ", ".join(sorted(modes - {"raw"}))
            raise InputError(f"the labelled requests in {folder} were logged with --log-inputs {shown}, "
                             "which keeps no inputs to train on; serve with --log-inputs raw and collect "
                             "feedback again")
        raise InputError(f"no logged request in {folder} has a feedback label ({len(labels)} label(s) for "
                         "request ids not in the log); post labels for requests the log holds")
    return FeedbackRows(inputs, ys, files, skipped)


def _transform(spec: dict[str, Any], kind: str, inputs: list[Any]) -> np.ndarray:
    if kind == "image":
        from edge_runtime.preprocess import preprocess_image

        return np.concatenate([preprocess_image(spec, np.asarray(v, dtype=np.float32)[None])
                               for v in inputs]).astype(np.float32)
    frame = pd.DataFrame([{k: (np.nan if v is None else v) for k, v in row.items()} for row in inputs])
    x = preprocessing.transform(spec, frame)
    if not np.isfinite(x).all():
        raise DataError("a logged row has a value the preprocessing cannot turn into a number")
    return x


def train_with_feedback(store: RunStore, from_ref: str, log_dir: Path, progress: Any = None) -> Any:
    """A new run: the old run's settings, its train split plus the labelled logged inputs."""
    from edgeship.training.models import resolve_model_name
    from edgeship.training.stage import (
        Prepared,
        TrainConfig,
        TrainResult,
        _data_section,
        _fit_and_evaluate,
        _headline,
        _write_data,
        prepare,
    )

    old = store.resolve(from_ref)
    stage = old.last_stage("train")
    if stage is None:
        raise RunError(f"run {old.id} was not made by `edgeship train` (no train stage), so it has no "
                       "settings to retrain with; use a trained run")
    names = {f.name for f in fields(TrainConfig)}
    params = {k: v for k, v in (stage.get("params") or {}).items() if k in names}
    if isinstance(params.get("image_size"), list):
        params["image_size"] = tuple(params["image_size"])
    cfg = TrainConfig(**params)
    cfg.check()
    rows = read_feedback_rows(log_dir)
    prep = prepare(cfg)
    old_data = old.manifest.get("data") or {}
    if old_data.get("sha256") and old_data["sha256"] != prep.data.sha256:
        raise DataError(f"the dataset {cfg.dataset} changed since run {old.id} (sha256 differs); "
                        "retrain from the data that run used")
    labels = prep.data.labels
    index = {lab: i for i, lab in enumerate(labels)}
    known = [(v, index[y]) for v, y in zip(rows.inputs, rows.labels, strict=True) if y in index]
    unknown = len(rows.labels) - len(known)
    if unknown:
        warn(f"{unknown} feedback label(s) are not among the model's classes ({', '.join(labels[:10])}); "
             "skipped")
    if not known:
        raise InputError(f"no feedback label in {log_dir} names one of the model's classes "
                         f"({', '.join(labels[:10])})")
    x_new = _transform(prep.spec, prep.data.kind, [v for v, _ in known])
    y_new = np.array([y for _, y in known], dtype=np.int64)
    if x_new.shape[1:] != prep.arrays["x_train"].shape[1:]:
        raise DataError(f"logged inputs have shape {x_new.shape[1:]}, the model takes "
                        f"{prep.arrays['x_train'].shape[1:]}; were they logged by this run's model?")
    arrays = dict(prep.arrays)
    arrays["x_train"] = np.concatenate([arrays["x_train"], x_new]).astype(np.float32)
    arrays["y_train"] = np.concatenate([arrays["y_train"], y_new]).astype(np.int64)
    prep = Prepared(prep.data, prep.split, prep.spec, arrays)
    model_name = resolve_model_name(cfg.model, prep.data.kind)
    lineage = {"parent_run": old.id, "feedback": {
        "folder": str(Path(log_dir).resolve()), "files": rows.files, "rows_added": len(known),
        "skipped": {**rows.skipped, "unknown_label": unknown}}}
    with store.new_run(f"{prep.data.name}-{model_name}-feedback", cfg.seed) as run:
        run_params = {**asdict(cfg), "model": model_name, "from_run": old.id,
                      "add_feedback": lineage["feedback"]["folder"]}
        with run.stage("train", run_params) as st:
            _write_data(st.output_dir("data"), prep)
            metrics, model_section = _fit_and_evaluate(st.output_dir("model"), prep, cfg, model_name,
                                                       progress)
            data_section = _data_section(prep, cfg)
            data_section["split"]["sizes"] = {**data_section["split"]["sizes"],
                                              "train": len(arrays["x_train"])}
            data_section["feedback_rows"] = len(known)
            st.set_section("data", data_section)
            st.set_section("model", model_section)
            st.set_section("lineage", lineage)
            st.metrics.update(_headline(metrics), epochs_run=metrics["epochs_run"],
                              feedback_rows=len(known))
            card = model_card({**run.manifest, "data": data_section, "model": model_section}, metrics)
            (st.output_dir("model") / "model_card.md").write_text(card, encoding="utf-8")
    return TrainResult(run=run, metrics=metrics)

