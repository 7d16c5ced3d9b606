"""Low-rank factorisation: W (in x out) ~ A (in x r) @ B (r x out) from a truncated SVD.

A Dense (or 1x1 convolution) becomes two smaller ones when r * (in + out) < in * out; the
product is initialised from the SVD, then the model is fine-tuned to recover accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeship.compression.base import PassContext, fine_tune, settle_batch_norm
from edgeship.core.errors import InputError
from edgeship.training.keras_env import keras


@dataclass(frozen=True)
class LowRankConfig:
    rank: int | None = None  # a fixed rank, or None for "auto"
    energy: float = 0.9  # auto: the smallest rank keeping this share of sum(s^2)

    def check(self) -> None:
        if self.rank is not None and self.rank < 1:
            raise InputError(f"--low-rank {self.rank}: use a positive rank or 'auto'")
        if not 0 < self.energy <= 1:
            raise InputError(f"--low-rank-energy {self.energy}: use a fraction in (0, 1]")

    @classmethod
    def parse(cls, value: str, energy: float = 0.9) -> LowRankConfig:
        if value == "auto":
            return cls(rank=None, energy=energy)
        try:
            return cls(rank=int(value), energy=energy)
        except ValueError:
            raise InputError(f"--low-rank {value}: use a positive whole rank or 'auto'") from None


def choose_rank(singular_values: np.ndarray, cfg: LowRankConfig) -> int:
    if cfg.rank is not None:
        return min(cfg.rank, len(singular_values))
    energy = np.cumsum(singular_values**2) / np.sum(singular_values**2)
    return int(np.searchsorted(energy, cfg.energy) + 1)


def factorise(kernel: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced factors: A = U_r sqrt(S_r), B = sqrt(S_r) V_r^T."""
    u, s, vt = np.linalg.svd(kernel, full_matrices=False)
    root = np.sqrt(s[:rank])
    return (u[:, :rank] * root).astype(np.float32), (root[:, None] * vt[:rank]).astype(np.float32)


def low_rank(model: Any, ctx: PassContext, cfg: LowRankConfig) -> Any:
    """A factorised, fine-tuned copy of ``model`` (a chain of layers: edgeship's models are)."""
    cfg.check()
    k = keras()
    layers = model.layers
    if not _is_chain(model):
        raise InputError("--low-rank needs a model that is a chain of layers; this one branches")
    x = inputs = k.Input(shape=model.input_shape[1:], name=layers[0].name)
    replaced: dict[str, dict[str, int]] = {}
    pending_weights: list[tuple[Any, list[np.ndarray]]] = []
    for layer in layers[1:]:
        plan = _plan(layer, cfg)
        if plan is None:
            clone = layer.__class__.from_config(layer.get_config())
            x = clone(x)
            pending_weights.append((clone, layer.get_weights()))
            continue
        a, b, bias, conv = plan
        rank = a.shape[1]
        first_cfg = {"name": f"{layer.name}_lr_a", "use_bias": False}
        config = layer.get_config()
        if conv:
            first = k.layers.Conv2D(rank, 1, **first_cfg)
            second = k.layers.Conv2D(b.shape[1], 1, name=layer.name,
                                     activation=config.get("activation"), use_bias=bias is not None)
        else:
            first = k.layers.Dense(rank, **first_cfg)
            second = k.layers.Dense(b.shape[1], name=layer.name, activation=config.get("activation"),
                                    use_bias=bias is not None)
        x = second(first(x))
        shape_a = (1, 1, *a.shape) if conv else a.shape
        shape_b = (1, 1, *b.shape) if conv else b.shape
        pending_weights.append((first, [a.reshape(shape_a)]))
        pending_weights.append((second, [b.reshape(shape_b)] + ([bias] if bias is not None else [])))
        replaced[layer.name] = {"rank": int(rank), "in": int(a.shape[0]), "out": int(b.shape[1])}
    factored = k.Model(inputs, x, name=model.name)
    for layer, weights in pending_weights:
        layer.set_weights(weights)
    if not replaced:
        raise InputError("--low-rank found no Dense or 1x1 convolution that a lower rank would shrink; "
                         "try a smaller rank")
    ctx.notes["low_rank"] = replaced
    fine_tune(factored, ctx)
    settle_batch_norm(factored, ctx)
    ctx.applied.append("low_rank")
    return factored


def _plan(layer: Any, cfg: LowRankConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, bool] | None:
    k = keras()
    if isinstance(layer, k.layers.Dense):
        kernel, conv = layer.get_weights()[0], False
    elif (isinstance(layer, k.layers.Conv2D) and not isinstance(layer, k.layers.DepthwiseConv2D)
          and tuple(layer.kernel_size) == (1, 1) and tuple(layer.strides) == (1, 1)
          and layer.groups == 1):
        kernel, conv = layer.get_weights()[0][0, 0], True
    else:
        return None
    n_in, n_out = kernel.shape
    s = np.linalg.svd(kernel, compute_uv=False)
    rank = choose_rank(s, cfg)
    if rank * (n_in + n_out) >= n_in * n_out:
        return None  # no saving at this rank
    a, b = factorise(kernel, rank)
    bias = layer.get_weights()[1] if layer.use_bias else None
    return a, b, bias, conv


def _is_chain(model: Any) -> bool:
    """Each layer fed by exactly the one before it, read from the public model config."""
    config = model.get_config()
    names = [layer["name"] for layer in config.get("layers", [])]
    if not names:
        return False
    for prev, layer in zip(names, config["layers"][1:], strict=False):
        nodes = layer.get("inbound_nodes", [])
        if len(nodes) != 1 or len(nodes[0]) != 1 or nodes[0][0][0] != prev:
            return False
    return True
