"""Preprocessing fitted on the train split only, and written down as a spec.

The spec (docs/architecture.md) is plain JSON so a device can apply it with numpy alone:
``edge_runtime`` and the browser page implement the same arithmetic, and tests hold them
to it. Nothing here ever looks at validation or test rows while fitting.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from edgeship.core.console import warn
from edgeship.core.errors import DataError
from edgeship.training.datasets import RawDataset

# A text column with at most this many distinct train values is one-hot encoded.
MAX_CATEGORIES = 20


def fit(data: RawDataset, train_idx: np.ndarray, raw_pixels: bool = False) -> dict[str, Any]:
    """The preprocessing spec, from the train rows alone.

    ``raw_pixels``: an image model that rescales its own inputs (a stock application's leading
    ``Rescaling``/``Normalization``) gets pixels on the 0-255 scale it was built for, not
    standardised ones: standardised, it would see 1/127.5 of its input range and barely learn.
    """
    if data.kind == "image":
        return _raw_pixels(data) if raw_pixels else _fit_image(data, train_idx)
    return _fit_tabular(data.frame.iloc[train_idx])


def transform(spec: dict[str, Any], raw: Any) -> np.ndarray:
    """Raw rows (images array or DataFrame) -> the model's float32 input."""
    if spec["kind"] == "image":
        x = np.asarray(raw, np.float32) * spec["scale"]
        mean = np.asarray(spec["mean"], np.float32)
        std = np.asarray(spec["std"], np.float32)
        return ((x - mean) / std).astype(np.float32)
    return _transform_tabular(spec, raw)


def _fit_image(data: RawDataset, train_idx: np.ndarray) -> dict[str, Any]:
    _, h, w, c = data.images.shape
    lo, hi = data.raw_range
    scale = 1.0 / (hi - lo) if hi > lo else 1.0
    scaled = data.images[train_idx] * scale
    mean = scaled.mean(axis=(0, 1, 2))
    std = scaled.std(axis=(0, 1, 2))
    std = np.where(std > 1e-8, std, 1.0)
    return {
        "kind": "image", "height": int(h), "width": int(w), "channels": int(c),
        "color_mode": data.color_mode, "raw_range": [lo, hi], "scale": scale,
        "mean": [float(v) for v in mean], "std": [float(v) for v in std],
    }


def _raw_pixels(data: RawDataset) -> dict[str, Any]:
    """The image spec that maps the dataset's raw range onto 0-255 and nothing more (the same
    arithmetic as a fitted spec, so every runtime applies it unchanged)."""
    _, h, w, c = data.images.shape
    lo, hi = data.raw_range
    scale = 255.0 / (hi - lo) if hi > lo else 1.0
    return {
        "kind": "image", "height": int(h), "width": int(w), "channels": int(c),
        "color_mode": data.color_mode, "raw_range": [lo, hi], "scale": scale,
        "mean": [float(lo * scale)] * int(c), "std": [1.0] * int(c), "model_rescales": True,
    }


def _fit_tabular(train: pd.DataFrame) -> dict[str, Any]:
    columns: list[dict[str, Any]] = []
    dropped: list[dict[str, str]] = []
    features: list[str] = []
    for name in train.columns:
        col = train[name]
        present = col.dropna()
        if present.empty:
            dropped.append({"name": str(name), "reason": "no values in the train split"})
            continue
        numeric = _as_numeric(col)
        if numeric is not None and not pd.api.types.is_bool_dtype(col):
            values = numeric.dropna().to_numpy(float)
            std = float(values.std())
            columns.append({
                "name": str(name), "type": "numeric", "fill": float(np.median(values)),
                "mean": float(values.mean()), "std": std if std > 1e-12 else 1.0,
                "min": float(values.min()), "max": float(values.max()),
            })
            features.append(str(name))
            continue
        as_text = present.astype(str)
        vocab = sorted(as_text.unique().tolist())
        if len(vocab) > MAX_CATEGORIES:
            reason = (f"dates ({len(vocab)} distinct values); pass --time-column {name} to split by them"
                      if _looks_like_dates(present) else
                      f"free text ({len(vocab)} distinct values in train)")
            dropped.append({"name": str(name), "reason": reason})
            continue
        columns.append({
            "name": str(name), "type": "categorical",
            "fill": str(as_text.mode().iloc[0]), "vocabulary": vocab,
        })
        features.extend(f"{name}={v}" for v in vocab)
    if dropped:
        names = ", ".join(d["name"] for d in dropped)
        warn(f"dropped columns the model cannot use: {names} (see the manifest for why)")
    if not columns:
        raise DataError("no usable feature columns remain after dropping free-text/empty ones")
    return {"kind": "tabular", "columns": columns, "dropped": dropped, "features": features}


def _transform_tabular(spec: dict[str, Any], frame: pd.DataFrame) -> np.ndarray:
    parts = []
    for col in spec["columns"]:
        values = frame[col["name"]] if col["name"] in frame.columns else pd.Series(
            [None] * len(frame))
        if col["type"] == "numeric":
            v = pd.to_numeric(values, errors="coerce").to_numpy(float)
            v = np.where(np.isnan(v), col["fill"], v)
            parts.append(((v - col["mean"]) / col["std"])[:, None])
        else:
            text = values.astype(object).where(values.notna(), col["fill"]).astype(str).to_numpy()
            vocab = np.asarray(col["vocabulary"], dtype=object)
            parts.append((text[:, None] == vocab[None, :]).astype(float))
    return np.concatenate(parts, axis=1).astype(np.float32)


def _looks_like_dates(present: pd.Series) -> bool:
    sample = present.astype(str).head(50)
    return bool(pd.to_datetime(sample, errors="coerce", format="mixed").notna().all())


def _as_numeric(col: pd.Series) -> pd.Series | None:
    if pd.api.types.is_numeric_dtype(col):
        return col.astype(float)
    converted = pd.to_numeric(col, errors="coerce")
    if converted[col.notna()].notna().all():
        return converted
    return None
