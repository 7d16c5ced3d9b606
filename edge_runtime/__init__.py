"""edge_runtime: run an exported edgeship model on a device with numpy and one runtime.

Copied onto devices on its own: it imports only the standard library, numpy and, lazily, the
runtime its artifact needs (ai-edge-litert / tflite-runtime, onnxruntime or TVM); never
TensorFlow (except as the last TFLite fallback) and never the rest of edgeship.

    from edge_runtime import EdgeModel
    model = EdgeModel.load("runs/<id>/exports/base/tflite-int8")
    model.predict_one(image).label
"""

from __future__ import annotations

from typing import Any

from edge_runtime.errors import ArtifactError, EdgeRuntimeError, InputError, MissingRuntimeError

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """The model classes load numpy; the error types alone (what edgeship's CLI needs) do not."""
    if name in ("BatchPrediction", "EdgeModel", "Prediction"):
        from edge_runtime import model

        return getattr(model, name)
    raise AttributeError(f"module 'edge_runtime' has no attribute {name!r}")

__all__ = [
    "ArtifactError",
    "BatchPrediction",
    "EdgeModel",
    "EdgeRuntimeError",
    "InputError",
    "MissingRuntimeError",
    "Prediction",
    "__version__",
]
