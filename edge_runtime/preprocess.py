"""The preprocessing spec (docs/architecture.md) applied with numpy alone.

Training fits the spec on the train split and every ``artifact.json`` carries a copy, so a
device turns raw inputs into model inputs exactly as training did, without the run directory,
TensorFlow or pandas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_runtime.errors import ArtifactError, InputError

# ITU-R 601-2 luma, the weights Pillow's convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def preprocess(spec: Mapping[str, Any], raw: Any) -> np.ndarray:
    """A batch of raw inputs -> the float32 batch the model takes."""
    kind = spec.get("kind")
    if kind == "image":
        return preprocess_image(spec, raw)
    if kind == "tabular":
        return preprocess_tabular(spec, raw)
    raise ArtifactError(
        f"unknown preprocessing kind {kind!r} in artifact.json (expected 'image' or 'tabular'); "
        "re-export with this edgeship version"
    )


# ---------------------------------------------------------------- images


def preprocess_image(spec: Mapping[str, Any], raw: Any) -> np.ndarray:
    """Raw intensities (N, H, W[, C]) -> ``(raw * scale - mean[c]) / std[c]`` at the model size.

    Images of another size are resized bilinearly (half-pixel centres, no antialiasing), and
    RGB/RGBA/grey are converted to the spec's colour mode, so callers may pass camera frames.
    """
    height, width, channels = int(spec["height"]), int(spec["width"]), int(spec["channels"])
    try:
        x = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InputError(f"image input is not numeric ({e}); pass an array of raw intensities") from e
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise InputError(
            f"expected a batch of images shaped (N, {height}, {width}, {channels}) or "
            f"(N, {height}, {width}); got shape {tuple(x.shape)}"
        )
    x = _to_channels(x, channels)
    if x.shape[1:3] != (height, width):
        x = resize_bilinear(x, height, width)
    _check_finite(x, "image input")
    lo_hi = spec.get("raw_range")
    if lo_hi is not None and x.size:
        lo, hi = float(lo_hi[0]), float(lo_hi[1])
        slack = 1e-3 * max(hi - lo, 1.0)
        seen_lo, seen_hi = float(x.min()), float(x.max())
        if seen_lo < lo - slack or seen_hi > hi + slack:
            raise InputError(
                f"raw image values span [{seen_lo:g}, {seen_hi:g}] but the model was trained on "
                f"[{lo:g}, {hi:g}]; rescale the input to that range"
            )
    return standardize(spec, x)


def standardize(spec: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    """``(raw * scale - mean[c]) / std[c]`` in float32: the last step of ``preprocess_image``."""
    channels = x.shape[-1]
    scale = float(spec.get("scale", 1.0))
    mean = np.asarray(spec.get("mean", [0.0] * channels), dtype=np.float32)
    std = np.asarray(spec.get("std", [1.0] * channels), dtype=np.float32)
    std = np.where(std == 0, np.float32(1.0), std)
    return ((x * np.float32(scale) - mean) / std).astype(np.float32, copy=False)


def raw_from_u8(spec: Mapping[str, Any], u8: Any) -> np.ndarray:
    """Decoded 8-bit intensities (0-255) -> the spec's raw range, as training read image files."""
    lo, hi = (float(v) for v in spec.get("raw_range", [0, 255]))
    return (lo + np.asarray(u8, dtype=np.float32) / 255.0 * (hi - lo)).astype(np.float32)


def u8_table(spec: Mapping[str, Any]) -> np.ndarray:
    """(256, channels) float32: what ``preprocess`` makes of each 8-bit intensity of a decoded
    image already at the model's size. Every step is per value, so one lookup per pixel gives
    bit-identical inputs at a fraction of the arithmetic (a server decodes every request)."""
    channels = int(spec["channels"])
    levels = np.repeat(np.arange(256, dtype=np.float32)[:, None], channels, axis=1)
    return standardize(spec, raw_from_u8(spec, levels))


def lookup_u8(table: np.ndarray, u8: np.ndarray) -> np.ndarray:
    """``u8`` (..., C) uint8 through ``u8_table``'s (256, C) table: channel c reads column c.
    One plain index per channel (3x faster than one fancy index over both axes, measured)."""
    channels = table.shape[1]
    if channels == 1:
        return np.ascontiguousarray(table[:, 0])[u8]
    columns = np.ascontiguousarray(table.T)
    out = np.empty(u8.shape, dtype=np.float32)
    for c in range(channels):
        out[..., c] = columns[c][u8[..., c]]
    return out


def _to_channels(x: np.ndarray, channels: int) -> np.ndarray:
    have = x.shape[-1]
    if have == channels:
        return x
    if have == 4:  # RGBA: drop alpha
        x, have = x[..., :3], 3
        if channels == 3:
            return x
    if have == 3 and channels == 1:
        return (x @ _LUMA)[..., None].astype(np.float32)
    if have == 1 and channels == 3:
        return np.repeat(x, 3, axis=-1)
    raise InputError(
        f"images have {have} channels but the model takes {channels}; "
        "pass greyscale (1), RGB (3) or RGBA (4) images"
    )


def resize_bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of (N, H, W, C) with half-pixel centres (as TF/Pillow place pixels)."""
    _, h, w, _ = x.shape
    if h == 0 or w == 0:
        raise InputError("an image has zero height or width")

    def axis(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
        pos = np.clip(pos, 0, src - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, fy = axis(h, height)
    x0, x1, fx = axis(w, width)
    top = x[:, y0][:, :, x0] * (1 - fx)[None, None, :, None] + x[:, y0][:, :, x1] * fx[None, None, :, None]
    bot = x[:, y1][:, :, x0] * (1 - fx)[None, None, :, None] + x[:, y1][:, :, x1] * fx[None, None, :, None]
    return (top * (1 - fy)[None, :, None, None] + bot * fy[None, :, None, None]).astype(np.float32)


# ---------------------------------------------------------------- tables


def column_names(spec: Mapping[str, Any]) -> list[str]:
    """The raw columns a tabular model needs, in order."""
    return [str(col["name"]) for col in spec.get("columns", [])]


def preprocess_tabular(spec: Mapping[str, Any], rows: Any) -> np.ndarray:
    """Raw rows -> standardised numeric and one-hot features, in the spec's feature order.

    A row is a mapping by column name (extra keys such as the target are ignored) or a sequence
    in column order. Missing values (None, NaN, "") take the column's ``fill``.
    """
    columns = list(spec.get("columns", []))
    one_row = isinstance(rows, np.ndarray) and rows.ndim == 1 and rows.dtype != object
    if isinstance(rows, Mapping) or one_row:
        raise InputError("expected a batch of rows; wrap a single row in a list (or use predict_one)")
    try:
        rows = list(rows)
    except TypeError as e:
        raise InputError(f"tabular input must be a list of rows, got {type(rows).__name__}") from e
    encoders = [_encoder(col) for col in columns]
    width = sum(size for size, _ in encoders)
    out = np.zeros((len(rows), width), dtype=np.float32)
    names = column_names(spec)
    for i, row in enumerate(rows):
        values = _row_values(row, names, i)
        j = 0
        for (size, encode), col, value in zip(encoders, columns, values, strict=True):
            out[i, j:j + size] = encode(value, i, col["name"])
            j += size
    features = spec.get("features")
    if features is not None and len(features) != width:
        raise ArtifactError(
            f"the preprocessing spec yields {width} features but lists {len(features)}; "
            "the artifact.json is inconsistent, re-export"
        )
    return out


def _row_values(row: Any, names: list[str], index: int) -> list[Any]:
    if isinstance(row, Mapping):
        missing = [n for n in names if n not in row]
        if missing:
            raise InputError(
                f"row {index} lacks column(s) {', '.join(missing)}; expected columns: {', '.join(names)}"
            )
        return [row[n] for n in names]
    if isinstance(row, str | bytes) or not isinstance(row, Sequence | np.ndarray):
        raise InputError(
            f"row {index} is a {type(row).__name__}; pass a dict or a sequence of "
            f"{len(names)} values ({', '.join(names)})"
        )
    values = list(row)
    if len(values) != len(names):
        raise InputError(
            f"row {index} has {len(values)} values, expected {len(names)} in this order: "
            f"{', '.join(names)}"
        )
    return values


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    if isinstance(value, float | np.floating):
        return math.isnan(value)
    return False


def _encoder(col: Mapping[str, Any]) -> tuple[int, Any]:
    kind = col.get("type")
    if kind == "numeric":
        mean = float(col.get("mean", 0.0))
        std = float(col.get("std", 1.0)) or 1.0
        fill = col.get("fill", mean)

        def numeric(value: Any, row: int, name: str) -> float:
            if _is_missing(value):
                value = fill
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise InputError(
                    f"row {row}, column {name!r}: {value!r} is not a number"
                ) from None
            if not math.isfinite(v):
                raise InputError(
                    f"row {row}, column {name!r}: {v} is not finite; pass a number or leave it empty"
                )
            return (v - mean) / std

        return 1, numeric
    if kind == "categorical":
        vocab = [str(v) for v in col.get("vocabulary", [])]
        index = {v: k for k, v in enumerate(vocab)}
        fill = col.get("fill")

        def categorical(value: Any, row: int, name: str) -> np.ndarray:
            if _is_missing(value):
                value = fill
            onehot = np.zeros(len(vocab), dtype=np.float32)
            k = index.get(str(value))
            if k is None:
                k = index.get(_category_key(value))
            if k is not None:  # an unseen value stays all zeros
                onehot[k] = 1.0
            return onehot

        return len(vocab), categorical
    raise ArtifactError(
        f"column {col.get('name')!r} has unknown type {kind!r} (expected numeric or categorical); "
        "re-export with this edgeship version"
    )


def _category_key(value: Any) -> str:
    # CSV gives "3", arrays give 3 or 3.0: all match a vocabulary entry "3".
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value).strip() if isinstance(value, str) else str(value)


def _check_finite(x: np.ndarray, what: str) -> None:
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise InputError(f"{what} holds {bad} NaN or infinite value(s); replace them before predicting")
