"""The one place TensorFlow is imported for building, training and compressing models.

tensorflow-model-optimization only works with Keras 2 (tf_keras), and TensorFlow picks its
Keras at import time, so ``TF_USE_LEGACY_KERAS`` must be set before the first import.
Everything that builds or trains a model gets Keras from here.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType


def _quiet_env() -> None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # bit-identical results across runs


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence C++ chatter that bypasses TensorFlow's log level, and Python warnings with it.

    Used around library loading (CUDA probes, oneDNN notes) and converter calls (MLIR
    statistics lines); Python exceptions still carry their messages. ``EDGESHIP_DEBUG=1``
    shows everything.
    """
    if os.environ.get("EDGESHIP_DEBUG") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def tf() -> ModuleType:
    _quiet_env()
    if "tensorflow" not in sys.modules:
        with quiet_native_stderr():
            import tensorflow

        tensorflow.get_logger().setLevel("ERROR")
    return sys.modules["tensorflow"]


def keras() -> ModuleType:
    """``tf_keras``, with TensorFlow configured for it."""
    tf()
    if "tf_keras" not in sys.modules:
        with quiet_native_stderr():
            import tf_keras  # noqa: F401
    return sys.modules["tf_keras"]


def tfmot() -> ModuleType:
    """tensorflow-model-optimization, which needs tf_keras configured first."""
    keras()
    if "tensorflow_model_optimization" not in sys.modules:
        with quiet_native_stderr():
            import tensorflow_model_optimization  # noqa: F401
    return sys.modules["tensorflow_model_optimization"]


def seed_everything(seed: int) -> None:
    """Same seed, same data, same weights: on CPU this gave bit-identical weights in two processes."""
    k = keras()
    k.utils.set_random_seed(seed)
    tf().config.experimental.enable_op_determinism()


def custom_objects() -> dict[str, object]:
    """What a saved edgeship model may contain besides stock layers: tfmot's QAT wrappers, and the
    layers tf_keras's own applications define, which a model imported from one carries into its
    run (a ConvNeXt's ``LayerScale``: without it the run's own model.keras does not load back)."""
    return {**application_layers(), **qat_objects()}


def qat_objects() -> dict[str, object]:
    """tfmot's QAT wrappers and configs, by the names a saved QAT model gives them."""
    merged: dict[str, object] = {}
    for part in tfmot().quantization.keras.quantize_scope().custom_objects:
        merged.update(part)
    return merged


def application_layers() -> dict[str, type]:
    """ConvNeXt's ``LayerScale`` and ``StochasticDepth``: tf_keras defines them in its convnext
    module only (the one private tf_keras import), and an ``.h5`` names them without a module."""
    keras()
    from tf_keras.src.applications import convnext

    return {"LayerScale": convnext.LayerScale, "StochasticDepth": convnext.StochasticDepth}


def load_model(path: str | os.PathLike[str]) -> object:
    """Load a model edgeship saved (plain, pruned/clustered-and-stripped, or QAT) in a run.

    Not a safety check: Keras' ``safe_mode`` refuses only pickled lambdas in a ``.keras`` file,
    tf_keras ignores it for ``.h5``, and neither stops a config from naming a module to import.
    A model from anyone else goes through ``edgeship.training.imported`` (an allowlist checked
    before Keras reads the file) first; this function trusts its file.
    """
    k = keras()
    return k.models.load_model(path, custom_objects=custom_objects(), compile=False,
                               safe_mode=True)
