"""``edgeship run``: the whole chain on the built-in default, one stage after another.

Each stage is the same library call its own command makes; this module only orders them
and collects their summaries. Later stages add themselves here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgeship.runstore import RunStore


@dataclass
class PipelineResult:
    run_id: str
    run_dir: str
    steps: dict[str, Any] = field(default_factory=dict)


def run_pipeline(store: RunStore, dataset: str = "digits", seed: int = 0,
                 epochs: int = 60, progress_factory: Any = None) -> PipelineResult:
    from training.stage import TrainConfig, train

    cfg = TrainConfig(dataset=dataset, seed=seed, epochs=epochs)
    if progress_factory is not None:
        with progress_factory("training", cfg.epochs) as bar:
            trained = train(store, cfg, progress=bar)
    else:
        trained = train(store, cfg)
    result = PipelineResult(run_id=trained.run.id, run_dir=str(trained.run.path))
    result.steps["train"] = trained.metrics
    return result
