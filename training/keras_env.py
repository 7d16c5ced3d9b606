"""The one place TensorFlow is imported for building, training and compressing models.

tensorflow-model-optimization only works with Keras 2 (tf_keras), and TensorFlow picks its
Keras at import time, so ``TF_USE_LEGACY_KERAS`` must be set before the first import.
Everything that builds or trains a model gets Keras from here.
"""

from __future__ import annotations

import os
from types import ModuleType


def _quiet_env() -> None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # bit-identical results across runs


def keras() -> ModuleType:
    """``tf_keras``, with TensorFlow configured for it."""
    _quiet_env()
    import tf_keras

    return tf_keras


def tf() -> ModuleType:
    _quiet_env()
    import tensorflow

    tensorflow.get_logger().setLevel("ERROR")
    return tensorflow


def seed_everything(seed: int) -> None:
    """Same seed, same data, same weights: PLATFORM.md verified this on CPU."""
    k = keras()
    k.utils.set_random_seed(seed)
    tf().config.experimental.enable_op_determinism()
