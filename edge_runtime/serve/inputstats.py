"""What a request log keeps of an input (``--log-inputs summary|raw``): per-feature bins for
tables, mean, spread and an intensity histogram for images, the fraction an int8 artifact clips.
Numpy only; it runs on the device beside the server (``requestlog.py`` writes the lines)."""

from __future__ import annotations

import base64
import binascii
import bisect
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.preprocess import preprocess

IMAGE_BINS = 8
OTHER = "__other__"
MISSING = "__missing__"
NORMAL_DECILES = (-1.2816, -0.8416, -0.5244, -0.2533, 0.0, 0.2533, 0.5244, 0.8416, 1.2816)


def default_bins(spec: Mapping[str, Any]) -> dict[str, list[float]]:
    """Fallback numeric bin edges: the deciles of a normal with the column's train mean and std."""
    out: dict[str, list[float]] = {}
    for col in spec.get("columns", []):
        if col.get("type") == "numeric":
            mean, std = float(col.get("mean", 0.0)), float(col.get("std", 1.0)) or 1.0
            out[str(col["name"])] = [mean + std * z for z in NORMAL_DECILES]
    return out


def bin_index(edges: Sequence[float], value: float) -> int:
    """The bin of ``value`` among ``len(edges) + 1`` bins cut at ``edges`` (as ``np.searchsorted``
    with ``side="right"``, which the monitor uses on the train split)."""
    return bisect.bisect_right(edges, value)


def image_edges(spec: Mapping[str, Any]) -> np.ndarray:
    """The intensity histogram's edges, in ``raw * scale`` units over the spec's raw range."""
    lo, hi = (float(v) for v in spec.get("raw_range", (0.0, 255.0)))
    scale = float(spec.get("scale", 1.0))
    return np.linspace(lo * scale, hi * scale, IMAGE_BINS + 1)


def image_stats(spec: Mapping[str, Any], x: np.ndarray) -> dict[str, Any]:
    """Per-image mean, std and intensity histogram (fractions) of a preprocessed image.

    Computed on ``raw * scale`` (the standardisation undone), so the same numbers come from the
    train split on the host and from camera frames of any size on the device. Values outside
    the raw range count in the end bins.
    """
    return ImageStats(spec, x.shape[-1])(x)


class ImageStats:
    """``image_stats`` with the spec's constants worked out once (the request log calls it per image)."""

    def __init__(self, spec: Mapping[str, Any], channels: int):
        mean = np.asarray(spec.get("mean", [0.0] * channels), dtype=np.float32)
        std = np.asarray(spec.get("std", [1.0] * channels), dtype=np.float32)
        self.mean, self.std = mean, np.where(std == 0, np.float32(1.0), std)
        edges = image_edges(spec)
        self.lo, self.width = float(edges[0]), float(edges[-1] - edges[0]) or 1.0

    def __call__(self, x: np.ndarray) -> dict[str, Any]:
        u = (x * self.std + self.mean).ravel()
        idx = np.clip(((u - self.lo) * (IMAGE_BINS / self.width)).astype(np.int64), 0, IMAGE_BINS - 1)
        counts = np.bincount(idx, minlength=IMAGE_BINS)
        n = max(u.size, 1)
        m = float(u.mean())
        sd = math.sqrt(max(float(np.dot(u, u)) / n - m * m, 0.0))
        return {"mean": round(m, 6), "std": round(sd, 6), "hist": [round(float(c) / n, 6) for c in counts]}


def clipped_fraction(x: np.ndarray, quant: Mapping[str, Any] | None, dtype: str) -> float | None:
    """The fraction of ``x``'s values the input quantisation cannot represent (None: a float input)."""
    if not quant or quant.get("scale") in (None, 0) or np.dtype(dtype).kind not in "iu":
        return None
    info = np.iinfo(np.dtype(dtype))
    q = np.round(x / np.float32(quant["scale"])) + int(quant.get("zero_point", 0))
    return round(float(((q < info.min) | (q > info.max)).mean()), 6) if q.size else 0.0


class InputRecorder:
    """One artifact's input record: the mode's fields for one raw instance."""

    def __init__(self, artifact: Mapping[str, Any], mode: str,
                 bins: Mapping[str, Sequence[float]] | None = None):
        self.spec = dict(artifact.get("preprocessing") or {})
        self.kind = self.spec.get("kind")
        self.mode = mode
        spec_in = (artifact.get("inputs") or [{}])[0]
        self.quant = spec_in.get("quantization")
        self.dtype = str(spec_in.get("dtype", "float32"))
        recorded = (artifact.get("monitoring") or {}).get("bins")
        self.bins = {**default_bins(self.spec), **(recorded or {}), **(bins or {})}
        self.columns = [dict(c) for c in self.spec.get("columns", [])]
        self._stats: ImageStats | None = None
        self._stats_channels = 0

    def describe(self) -> dict[str, Any]:
        """What a summary line's indices mean: written to bins.json beside the logs."""
        if self.kind == "image":
            return {"kind": "image", "image_edges": image_edges(self.spec).tolist()}
        return {"kind": "tabular", "numeric": {k: list(v) for k, v in self.bins.items()},
                "categorical": {str(c["name"]): list(c.get("vocabulary") or [])
                                for c in self.columns if c.get("type") == "categorical"}}

    def record(self, instance: Any, x: np.ndarray | None = None) -> dict[str, Any]:
        """The input record of one raw instance (``x``: its preprocessed row, if the caller has it)."""
        if self.mode == "none" or not self.kind:
            return {"mode": "none"}
        if self.kind == "image":
            raw = _image_raw(self.spec, instance) if x is None or self.mode == "raw" else None
            if x is None:
                x = preprocess(self.spec, raw[None])[0]
            if self._stats is None or self._stats_channels != x.shape[-1]:
                self._stats, self._stats_channels = ImageStats(self.spec, x.shape[-1]), x.shape[-1]
            out: dict[str, Any] = {"mode": self.mode, **self._stats(x)}
            if self.mode == "raw":
                out["values"] = np.round(raw, 4).tolist()
        else:
            row = _row_dict(instance, [str(c["name"]) for c in self.columns])
            out = {"mode": self.mode}
            if self.mode == "raw":
                out["values"] = {k: _jsonable(v) for k, v in row.items()}
            else:
                out["bins"], out["categories"] = self._summarise(row)
            if self.quant and x is None:
                x = preprocess(self.spec, [row])[0]
        clipped = clipped_fraction(x, self.quant, self.dtype) if x is not None else None
        if clipped is not None:
            out["clipped"] = clipped
        return out

    def _summarise(self, row: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        bins: dict[str, Any] = {}
        cats: dict[str, str] = {}
        for col in self.columns:
            name = str(col["name"])
            value = row.get(name)
            if col.get("type") == "categorical":
                vocab = [str(v) for v in col.get("vocabulary") or []]
                cats[name] = MISSING if _missing(value) else (str(value) if str(value) in vocab else OTHER)
                continue
            edges = self.bins.get(name)
            num = _number(value)
            if edges is None:
                continue
            bins[name] = MISSING if num is None else bin_index(edges, num)
        return bins, cats


def _missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _number(value: Any) -> float | None:
    if _missing(value):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


def _row_dict(instance: Any, names: list[str]) -> dict[str, Any]:
    if isinstance(instance, Mapping):
        return {n: instance.get(n) for n in names}
    values = list(instance)
    if len(values) != len(names):
        raise InputError(f"a row of {len(values)} values for {len(names)} columns")
    return dict(zip(names, values, strict=True))


def _image_raw(spec: Mapping[str, Any], instance: Any) -> np.ndarray:
    """One raw image (H x W x C float32): a nested array, or base64 PNG/JPEG (``{"b64": ...}``)."""
    if isinstance(instance, Mapping):
        instance = instance.get("b64")
    if isinstance(instance, str):
        try:
            data = base64.b64decode(instance, validate=True)
        except (binascii.Error, ValueError) as e:
            raise InputError("an image instance is not valid base64") from e
        from edge_runtime.images import image_array, open_image

        mode = "L" if int(spec["channels"]) == 1 else "RGB"
        with open_image(io.BytesIO(data)) as img:  # type: ignore[arg-type]
            arr = image_array(img, mode, (int(spec["width"]), int(spec["height"])))
    else:
        arr = np.asarray(instance, dtype=np.float32)
    return arr[..., None] if arr.ndim == 2 else arr


# ---------------------------------------------------------------- the files
