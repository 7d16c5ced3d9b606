"""``EdgeModel``: an exported artifact, loaded and ready to predict.

The same code runs in export validation, in benchmarks and on devices, so what was validated
is what ships: artifact.json is read, the model file's sha256 checked before any runtime sees
it, inputs checked and quantised from the recorded scale and zero point, and outputs
dequantised to float32 probabilities.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.artifact import artifact_dir, read_artifact, verify_model_file
from edge_runtime.backends import open_backend
from edge_runtime.errors import ArtifactError, InputError
from edge_runtime.preprocess import column_names, lookup_u8, preprocess, u8_table


@dataclass(frozen=True)
class Prediction:
    """One input's answer."""

    label: str
    index: int
    confidence: float
    probabilities: np.ndarray  # (classes,) float32


@dataclass(frozen=True)
class BatchPrediction:
    """A batch's answers; ``labels[i]`` is the top class name of row i."""

    probabilities: np.ndarray  # (N, classes) float32
    indices: np.ndarray  # (N,) int64
    labels: list[str]

    @property
    def confidences(self) -> np.ndarray:
        return self.probabilities[np.arange(len(self.indices)), self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Prediction:
        return Prediction(self.labels[i], int(self.indices[i]), float(self.confidences[i]),
                          self.probabilities[i])


class EdgeModel:
    """An artifact folder (model file + artifact.json) bound to its runtime."""

    def __init__(self, path: Path, artifact: dict[str, Any], backend: Any, init_ms: float):
        self.path = path
        self.artifact = artifact
        self.backend = backend
        self.init_ms = init_ms
        spec_in, spec_out = artifact["inputs"][0], artifact["outputs"][0]
        self._shape = [int(d) for d in spec_in["shape"]]
        self._in_dtype = np.dtype(spec_in["dtype"])
        self._in_q = _quant(spec_in)
        self._out_dtype = np.dtype(spec_out["dtype"])
        self._out_q = _quant(spec_out)
        self._fixed_batch = self._shape[0] if self._shape and self._shape[0] > 0 else None
        self._u8_table: np.ndarray | None = None  # preprocess_u8's lookup, built on first use
        classes = int(spec_out["shape"][-1])
        labels = artifact.get("labels") or [str(i) for i in range(classes)]
        if len(labels) != classes:
            raise ArtifactError(
                f"artifact.json lists {len(labels)} labels for {classes} outputs; re-export the model"
            )
        self._labels = [str(label) for label in labels]
        for what, declared, actual in (("input", self._in_dtype, backend.input_dtype),
                                       ("output", self._out_dtype, backend.output_dtype)):
            if declared != actual:
                raise ArtifactError(
                    f"artifact.json says the {what} is {declared} but the model file's is {actual}; re-export"
                )

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None) -> EdgeModel:
        """Read artifact.json, verify the model file's sha256, then open the format's runtime."""
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads must be a positive integer, got {threads!r}")
        t0 = time.perf_counter_ns()
        folder = artifact_dir(path)
        meta = read_artifact(folder)
        model_file = verify_model_file(folder, meta)
        backend = open_backend(meta["format"], model_file, meta, threads)
        init_ms = (time.perf_counter_ns() - t0) / 1e6
        return cls(folder, meta, backend, init_ms)

    # ------------------------------------------------------------ facts

    @property
    def labels(self) -> list[str]:
        return list(self._labels)

    @property
    def format(self) -> str:
        return str(self.artifact["format"])

    @property
    def quantize(self) -> str:
        return str(self.artifact.get("quantize", "float32"))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The model input shape with -1 for a free batch dimension."""
        return tuple(self._shape)

    @property
    def preprocessing(self) -> dict[str, Any]:
        spec = self.artifact.get("preprocessing")
        if not spec:
            raise ArtifactError(
                "artifact.json has no preprocessing spec, so raw inputs cannot be used; "
                "pass preprocessed arrays to infer() or re-export"
            )
        return spec

    @property
    def model_file(self) -> Path:
        return self.path / str(self.artifact["file"])

    # ------------------------------------------------------------ inference

    def check_input(self, x: Any) -> np.ndarray:
        """A preprocessed batch as a C-contiguous float32 array, or a one-line InputError."""
        expected = "(N, " + ", ".join(str(d) for d in self._shape[1:]) + ") float32"
        arr = np.asarray(x)
        if not (np.issubdtype(arr.dtype, np.floating)):
            raise InputError(f"expected a preprocessed batch {expected}; got dtype {arr.dtype}")
        if arr.ndim == len(self._shape) - 1 and list(arr.shape) == self._shape[1:]:
            raise InputError(
                f"expected a batch {expected}; got one sample {tuple(arr.shape)}: add a batch axis (x[None])"
            )
        if arr.ndim != len(self._shape) or list(arr.shape[1:]) != self._shape[1:]:
            raise InputError(f"expected a preprocessed batch {expected}; got shape {tuple(arr.shape)}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            rows = np.unique(np.nonzero(~np.isfinite(arr.reshape(len(arr), -1)))[0])
            shown = ", ".join(str(r) for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
            raise InputError(f"input holds NaN or infinite values (rows {shown}); fix them before inference")
        return arr

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """Float32 batch -> the model's input dtype, from the recorded scale and zero point."""
        return quantize(x, self._in_dtype, self._in_q)

    def dequantize_output(self, y: np.ndarray) -> np.ndarray:
        return dequantize(y, self._out_q)

    def prepare(self, x: Any) -> np.ndarray:
        """Checked and quantised, ready for the backend (timing binds this outside the loop)."""
        return self.quantize_input(self.check_input(x))

    def infer(self, x: Any) -> np.ndarray:
        """A preprocessed float32 batch of any size -> float32 probabilities (N, classes)."""
        q = self.prepare(x)
        n = q.shape[0]
        classes = len(self._labels)
        if n == 0:
            return np.zeros((0, classes), dtype=np.float32)
        b = self._fixed_batch
        if b is None:
            raw = self.backend.run(q)
        else:  # a build with a static batch: run in chunks, padding the last one
            parts = []
            for start in range(0, n, b):
                chunk = q[start:start + b]
                if len(chunk) < b:
                    pad = np.zeros((b - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
                    chunk = np.concatenate([chunk, pad])
                parts.append(self.backend.run(chunk)[: min(b, n - start)])
            raw = np.concatenate(parts)
        out = self.dequantize_output(np.asarray(raw)).reshape(n, -1)
        if out.shape[1] != classes:
            raise ArtifactError(f"the model returned {out.shape[1]} outputs for {classes} labels; re-export")
        return out

    # ------------------------------------------------------------ raw inputs

    def preprocess(self, raw_batch: Any) -> np.ndarray:
        """Raw inputs (images as raw intensities, rows as sequences or dicts) -> model inputs."""
        return preprocess(self.preprocessing, raw_batch)

    def preprocess_u8(self, u8_batch: np.ndarray) -> np.ndarray:
        """Decoded 8-bit images (N, H, W, C) at the model's size -> model inputs by table lookup:
        bit-identical to ``preprocess(raw_from_u8(...))``, several times cheaper."""
        if self._u8_table is None:
            self._u8_table = u8_table(self.preprocessing)
        return lookup_u8(self._u8_table, u8_batch)

    def predict(self, raw_batch: Any) -> BatchPrediction:
        """Raw batch -> probabilities and label names."""
        probs = self.infer(self.preprocess(raw_batch))
        idx = probs.argmax(axis=1).astype(np.int64) if len(probs) else np.zeros(0, np.int64)
        return BatchPrediction(probs, idx, [self._labels[i] for i in idx])

    def predict_one(self, raw: Any) -> Prediction:
        """One raw input (an image H x W [x C], a row as a sequence or dict) -> its prediction."""
        if self.preprocessing.get("kind") == "image":
            batch: Any = np.asarray(raw)[None]
        else:
            batch = [raw]
        return self.predict(batch)[0]

    def example_raw(self, batch: int = 1, seed: int = 0) -> Any:
        """Plausible raw inputs built from the spec, for benchmarks and smoke tests."""
        spec = self.preprocessing
        rng = np.random.default_rng(seed)
        if spec.get("kind") == "image":
            lo, hi = spec.get("raw_range", [0.0, 1.0])
            shape = (batch, int(spec["height"]), int(spec["width"]), int(spec["channels"]))
            return rng.uniform(float(lo), float(hi), size=shape).astype(np.float32)
        rows = []
        for _ in range(batch):
            row: list[Any] = []
            for col in spec.get("columns", []):
                if col.get("type") == "categorical":
                    vocab = col.get("vocabulary") or [col.get("fill")]
                    row.append(vocab[int(rng.integers(len(vocab)))])
                else:
                    row.append(float(col.get("mean", 0.0)) + float(col.get("std", 1.0)) * float(rng.normal()))
            rows.append(row)
        return rows

    @property
    def columns(self) -> list[str]:
        """A tabular model's raw columns, in order ([] for images)."""
        return column_names(self.preprocessing)

    def __repr__(self) -> str:
        return (f"EdgeModel({str(self.path)!r}, format={self.format!r}, quantize={self.quantize!r}, "
                f"backend={self.backend.name!r})")


def quantize(x: np.ndarray, dtype: Any, q: tuple[float, int] | None) -> np.ndarray:
    """Float32 values -> ``dtype``: ``round(x / scale) + zero_point``, clipped to the dtype's range.

    ``q`` is (scale, zero point); None casts (a float tensor). ``EdgeModel`` quantises its input
    with this, and so does every measurement that must match what a device runs.
    """
    dtype = np.dtype(dtype)
    if q is None:
        return x.astype(dtype, copy=False)
    scale, zero = q
    info = np.iinfo(dtype)
    v = np.round(x / np.float32(scale)) + zero
    return np.clip(v, info.min, info.max).astype(dtype)


def dequantize(y: np.ndarray, q: tuple[float, int] | None) -> np.ndarray:
    """Quantised values -> float32: ``(y - zero_point) * scale``; ``q`` None: a float32 cast."""
    if q is None:
        return y.astype(np.float32, copy=False)
    scale, zero = q
    return ((y.astype(np.float32) - np.float32(zero)) * np.float32(scale)).astype(np.float32)


def _quant(spec: dict[str, Any]) -> tuple[float, int] | None:
    if np.dtype(spec["dtype"]).kind not in "iu":
        return None
    q = spec.get("quantization")
    if not q or q.get("scale") in (None, 0):
        raise ArtifactError(
            f"the {spec.get('name', 'tensor')} is {spec['dtype']} but artifact.json has no scale/zero point; "
            "re-export"
        )
    return float(q["scale"]), int(q["zero_point"])

