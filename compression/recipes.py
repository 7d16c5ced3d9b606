"""Named recipes: the variants a user (or ``edgeship run``) gets without choosing passes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from edgeship.compression.stage import CompressConfig
from edgeship.core.errors import InputError

RECIPES: dict[str, list[CompressConfig]] = {
    # What `edgeship run` ships: the sparse QAT model (its artifacts are int8 only) and the
    # small student. The student is a float model: its int8 form is an export beside its
    # float32 one (both shippable), so its name says "distill25", not "-int8"; compress
    # measures it at int8 (quantize="int8") on the calibration rows export uses.
    "default": [
        CompressConfig(prune=0.75, quantize="qat", name="prune75-pqat"),
        CompressConfig(distill=True, student_width=0.25, quantize="int8", name="distill25"),
    ],
}


def recipe(name: str) -> list[CompressConfig]:
    if name not in RECIPES:
        raise InputError(f"unknown recipe '{name}'; recipes: {', '.join(RECIPES)}")
    return RECIPES[name]


def tuned_recipe(name: str, **settings: Any) -> list[CompressConfig]:
    """Recipe ``name`` with ``settings`` (seed, source, epochs, distill_epochs, learning_rate,
    batch_size, temperature, alpha, low_rank_energy) applied to every variant, each checked.

    A recipe fixes passes and names, not how long or how fast they fine-tune: those follow the
    command line, and the manifest records the values that ran.
    """
    allowed = {"seed", "source", "epochs", "distill_epochs", "learning_rate", "batch_size", "temperature",
               "alpha", "low_rank_energy"}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise InputError(f"recipe {name} fixes {', '.join(unknown)}; drop it")
    configs = [replace(c, **settings) for c in recipe(name)]
    for c in configs:
        c.check()
    return configs


def search_space() -> list[CompressConfig]:
    """What the search tries, cheapest and most promising first; every recipe ends in int8."""
    return [
        CompressConfig(quantize="int8"),
        CompressConfig(prune=0.5, quantize="qat"),
        CompressConfig(prune=0.75, quantize="qat"),
        CompressConfig(prune=0.9, quantize="qat"),
        CompressConfig(cluster=16, quantize="qat"),
        CompressConfig(cluster=8, quantize="qat"),
        CompressConfig(prune=0.75, cluster=16, quantize="qat"),
        CompressConfig(prune_structure="2:4", quantize="qat"),
        CompressConfig(low_rank="auto", quantize="int8"),
        CompressConfig(distill=True, student_width=0.5, quantize="int8"),
        CompressConfig(distill=True, student_width=0.25, quantize="int8"),
        CompressConfig(distill=True, student_width=0.5, prune=0.5, quantize="qat"),
    ]
