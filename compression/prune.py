"""Magnitude pruning with tfmot: wrap -> fine-tune on a polynomial schedule -> strip.

Unstructured sparsity shrinks the compressed (gzip) model; the 2:4 pattern is the one sparse
kernels on recent CPUs and accelerators can exploit for speed.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from edgeship.compression.base import PassContext, fine_tune, kernels, settle_batch_norm, wrap_kernel_layers
from edgeship.core.console import warn
from edgeship.core.errors import EdgeshipError, InputError
from edgeship.training.keras_env import tfmot

# Reached overall sparsity may fall short of the target by this much (tfmot rounds per layer);
# more, and the pass fails rather than ship a variant whose name overstates it.
SPARSITY_TOLERANCE = 0.02
# Past this share of the kernel weights left dense, a "pruneNN" name speaks for a minority of
# the model (an LSTM or GRU model's recurrent layer; depthwise kernels are a few percent).
MOSTLY_DENSE = 0.5


class SparsityNotReachedError(EdgeshipError):
    """Pruning left the model measurably less sparse than asked."""


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
    """A pruned, stripped copy of ``model``; fails in one line if the target was not reached."""
    wrapped = wrap_for_pruning(model, ctx, cfg)
    fine_tune(wrapped, ctx, extra_callbacks=[tfmot().sparsity.keras.UpdatePruningStep()])
    ctx.applied.append("prune")
    stripped = tfmot().sparsity.keras.strip_pruning(wrapped)
    settle_batch_norm(stripped, ctx)
    reached = sparsity_reached(stripped, ctx.notes.get("pruned_layers"))
    ctx.notes["sparsity_reached"] = {"requested": cfg.sparsity if cfg.structure is None else cfg.structure,
                                     **reached}
    check_sparsity(cfg, reached, ctx.notes.get("prune_skipped_layers") or [])
    return stripped


def sparsity_reached(model: Any, pruned: Collection[str] | None = None) -> dict[str, Any]:
    """Zeros per kernel layer, and overall (weighted by size) over the layers pruning acts on.

    ``pruned``: the layers whose kernels tfmot prunes (``None``: all). It leaves depthwise
    kernels dense (few weights, each a whole filter), so they are listed apart and counted in
    ``all_kernels`` only. A QAT model's layers carry tfmot's ``quant_`` prefix.
    """
    found = kernels(model)
    layers = {name: round(float((k == 0).mean()), 4) for name, k in found.items()}

    def counted(name: str) -> bool:
        return pruned is None or name in pruned or name.removeprefix("quant_") in pruned

    def overall(names: list[str]) -> float:
        total = sum(found[n].size for n in names)
        return round(sum(float((found[n] == 0).sum()) for n in names) / total, 4) if total else 0.0

    return {"overall": overall([n for n in found if counted(n)]), "all_kernels": overall(list(found)),
            "layers": layers, "not_pruned": [n for n in found if not counted(n)]}


def check_sparsity(cfg: PruneConfig, reached: dict[str, Any], skipped: list[str],
                   what: str = "pruning") -> None:
    """A one-line error when the model is less sparse than ``cfg`` asked (2:4: each wrapped layer)."""
    if cfg.structure == "2:4":
        short = [n for n, s in reached["layers"].items() if n not in skipped and s < 0.5 - SPARSITY_TOLERANCE]
        if short:
            raise SparsityNotReachedError(
                f"{what} to 2:4 left {', '.join(short[:5])} below 50 % sparsity; "
                "fine-tune longer (--epochs) or drop --quantize qat")
        return
    if reached["overall"] < cfg.sparsity - SPARSITY_TOLERANCE:
        dense = sorted((n for n, s in reached["layers"].items() if s < cfg.sparsity - SPARSITY_TOLERANCE),
                       key=lambda n: reached["layers"][n])
        raise SparsityNotReachedError(
            f"{what} reached {reached['overall']:.1%} sparsity, not the {cfg.sparsity:.0%} asked "
            f"(below target: {', '.join(dense[:5])}{' ...' if len(dense) > 5 else ''}); "
            "fine-tune longer (--epochs) or ask for less (--prune)")


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
    ctx.notes["pruned_layers"] = [layer.layer.name for layer in wrapped.layers
                                  if getattr(layer, "prunable_weights", None)]
    left_dense = dense_share(model, ctx.notes["pruned_layers"])
    if left_dense is not None:
        share, names = left_dense
        warn(f"pruning leaves {share:.0%} of the kernel weights dense ({', '.join(names[:3])}"
             f"{' ...' if len(names) > 3 else ''}): edgeship prunes Dense and convolution kernels, "
             f"not recurrent or depthwise ones, so the whole model ends about "
             f"{cfg.sparsity * (1 - share):.0%} sparse, not what the variant's name says")
    return wrapped


def dense_share(model: Any, pruned: Collection[str]) -> tuple[float, list[str]] | None:
    """The share of kernel weights pruning leaves alone and those layers, largest first, when
    that share is most of the model (``MOSTLY_DENSE``); None otherwise."""
    sizes = {name: int(k.size) for name, k in kernels(model).items()}
    total, pruned = sum(sizes.values()), set(pruned)
    left = {name: size for name, size in sizes.items() if name not in pruned}
    share = sum(left.values()) / total if total else 0.0
    return (share, sorted(left, key=lambda n: -left[n])) if share > MOSTLY_DENSE else None


def _fits_2_4(layer: Any) -> bool:
    """2:4 groups run along the input channels, which must be a multiple of 4."""
    kernel = next(w for w in layer.weights if w.name.endswith("kernel:0"))
    return kernel.shape[-2] % 4 == 0 if len(kernel.shape) > 1 else False
