"""``edgeship run``: the whole chain on the built-in default, one stage after another.

Each stage is the same library call its own command makes; this module only orders them and
collects their summaries. Later stages add themselves here.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from edgeship.runstore import RunDir, RunStore

ProgressFactory = Callable[[str, int | None], AbstractContextManager[Any]]


@dataclass(frozen=True)
class PipelineConfig:
    dataset: str = "digits"
    seed: int = 0
    epochs: int = 60
    recipe: str = "default"


@dataclass
class PipelineResult:
    run: RunDir
    train: Any = None
    variants: list[dict[str, Any]] = field(default_factory=list)


def run_pipeline(store: RunStore, cfg: PipelineConfig, progress: ProgressFactory) -> PipelineResult:
    from compression.recipes import recipe
    from compression.stage import compress_run
    from training.stage import TrainConfig, train

    tcfg = TrainConfig(dataset=cfg.dataset, seed=cfg.seed, epochs=cfg.epochs)
    with progress("train", tcfg.epochs) as bar:
        trained = train(store, tcfg, progress=bar)
    result = PipelineResult(run=trained.run, train=trained)
    for ccfg in recipe(cfg.recipe):
        with progress(f"compress {ccfg.name}", ccfg.pass_count()) as bar:
            result.variants.append(compress_run(trained.run, ccfg, progress=bar).summary)
    return result
