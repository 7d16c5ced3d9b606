"""Quantization: aware training now (QAT), or post-training at export.

QAT after pruning or clustering uses tfmot's collaborative schemes so the earlier pass
survives fine-tuning: pruning-preserving (PQAT) and cluster-preserving (CQAT). Post-training
choices only record intent here; their size and accuracy are measured through a real TFLite
conversion (``compression.measure``) and applied at export.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeship.compression.base import PassContext, fine_tune, flatten
from edgeship.core.errors import InputError
from edgeship.training.keras_env import tfmot

POST_TRAINING = ("dynamic", "float16", "int8")
CHOICES = ("qat", *POST_TRAINING)


@dataclass(frozen=True)
class QuantizeConfig:
    mode: str = "qat"

    def check(self) -> None:
        if self.mode not in CHOICES:
            raise InputError(f"--quantize {self.mode}: use one of {', '.join(CHOICES)}")


def scheme_for(applied: list[str]) -> tuple[str, Any]:
    """The QAT scheme that keeps what earlier passes achieved."""
    t = tfmot()
    combine = t.experimental.combine
    if "cluster" in applied:
        return "cqat", combine.Default8BitClusterPreserveQuantizeScheme(
            preserve_sparsity="prune" in applied)
    if "prune" in applied:
        return "pqat", combine.Default8BitPrunePreserveQuantizeScheme()
    return "qat", t.quantization.keras.default_8bit.Default8BitQuantizeScheme()


def quantize_aware(model: Any, ctx: PassContext, cfg: QuantizeConfig) -> Any:
    """A QAT copy of ``model`` (it keeps its fake-quant wrappers: export converts it to int8)."""
    cfg.check()
    if cfg.mode != "qat":
        ctx.notes["post_training_quantization"] = cfg.mode
        return model
    qk = tfmot().quantization.keras
    name, scheme = scheme_for(ctx.applied)
    # Nested models inlined first: tfmot annotates the top level's layers only.
    annotated = qk.quantize_annotate_model(flatten(model))
    with qk.quantize_scope():
        quantized = qk.quantize_apply(annotated, scheme)
    fine_tune(quantized, ctx)
    ctx.applied.append(name)
    ctx.notes["post_training_quantization"] = "int8"
    return quantized
