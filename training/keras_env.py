"""The one place TensorFlow is imported for building, training and compressing models.

tensorflow-model-optimization only works with Keras 2 (tf_keras), and TensorFlow picks its
Keras at import time, so ``TF_USE_LEGACY_KERAS`` must be set before the first import.
Everything that builds or trains a model gets Keras from here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType


def _quiet_env() -> None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # bit-identical results across runs


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """TensorFlow's C++ start-up chatter (CUDA probes, oneDNN notes) bypasses its log level.

    It is printed once, while the library loads; Python exceptions still surface normally.
    ``EDGESHIP_DEBUG=1`` shows it.
    """
    if "tensorflow" in sys.modules or os.environ.get("EDGESHIP_DEBUG") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def tf() -> ModuleType:
    _quiet_env()
    with _native_stderr_silenced():
        import tensorflow

    tensorflow.get_logger().setLevel("ERROR")
    return tensorflow


def keras() -> ModuleType:
    """``tf_keras``, with TensorFlow configured for it."""
    tf()
    import tf_keras

    return tf_keras


def seed_everything(seed: int) -> None:
    """Same seed, same data, same weights: PLATFORM.md verified this on CPU."""
    k = keras()
    k.utils.set_random_seed(seed)
    tf().config.experimental.enable_op_determinism()
