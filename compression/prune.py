"""Magnitude pruning with tfmot: wrap -> fine-tune on a polynomial schedule -> strip.

Unstructured sparsity shrinks the compressed (gzip) model; the 2:4 pattern is the one sparse
kernels on recent CPUs and accelerators can exploit for speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeship.compression.base import PassContext, fine_tune, wrap_kernel_layers
from edgeship.core.console import warn
from edgeship.core.errors import InputError
from edgeship.training.keras_env import tfmot


@dataclass(frozen=True)
class PruneConfig:
    sparsity: float = 0.75
    structure: str | None = None  # None (unstructured) or "2:4"
    begin_fraction: float = 0.0  # start of the schedule, as a fraction of fine-tuning steps
    end_fraction: float = 0.7  # reach the target here, then fine-tune at it

    def check(self) -> None:
        if not 0 <= self.sparsity < 1:
            raise InputError(f"--prune {self.sparsity}: sparsity must be in [0, 1), e.g. 0.75")
        if self.structure not in (None, "2:4"):
            raise InputError(f"--prune-structure {self.structure}: only 2:4 is supported")


def prune(model: Any, ctx: PassContext, cfg: PruneConfig) -> Any:
    """A pruned, stripped copy of ``model``."""
    wrapped = wrap_for_pruning(model, ctx, cfg)
    fine_tune(wrapped, ctx, extra_callbacks=[tfmot().sparsity.keras.UpdatePruningStep()])
    ctx.applied.append("prune")
    return tfmot().sparsity.keras.strip_pruning(wrapped)


def wrap_for_pruning(model: Any, ctx: PassContext, cfg: PruneConfig) -> Any:
    """A copy of ``model`` with tfmot's pruning wrappers on every layer that takes them."""
    cfg.check()
    sparsity = tfmot().sparsity.keras
    total_steps = ctx.steps_per_epoch * ctx.epochs
    if cfg.structure == "2:4":
        params: dict[str, Any] = {"sparsity_m_by_n": (2, 4)}
    else:
        # tfmot only prunes on steps that are multiples of the frequency from begin_step, so
        # end_step must be one of them or the final sparsity is never applied.
        frequency = max(1, ctx.steps_per_epoch // 4)
        begin = int(total_steps * cfg.begin_fraction)
        end = begin + frequency * max(1, int((total_steps * cfg.end_fraction - begin) // frequency))
        params = {"pruning_schedule": sparsity.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=cfg.sparsity, begin_step=begin,
            end_step=min(end, max(begin + frequency, total_steps - 1)), frequency=frequency,
        )}
    eligible = _fits_2_4 if cfg.structure == "2:4" else (lambda layer: True)
    wrapped, skipped = wrap_kernel_layers(
        model, lambda layer: sparsity.prune_low_magnitude(layer, **params), eligible)
    if skipped:
        warn(f"pruning left these layers dense (tfmot cannot wrap them): {', '.join(skipped)}")
    ctx.notes["prune_skipped_layers"] = skipped
    return wrapped


def _fits_2_4(layer: Any) -> bool:
    """2:4 groups run along the input channels, which must be a multiple of 4."""
    kernel = next(w for w in layer.weights if w.name.endswith("kernel:0"))
    return kernel.shape[-2] % 4 == 0 if len(kernel.shape) > 1 else False
