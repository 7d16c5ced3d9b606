"""Weight clustering with tfmot: each kernel keeps at most N distinct values.

N shared values compress well and are what a palette-based format would store; after
pruning, clustering keeps the zeros (sparsity-preserving clustering).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeship.compression.base import PassContext, fine_tune, settle_batch_norm, wrap_kernel_layers
from edgeship.core.console import warn
from edgeship.core.errors import InputError
from edgeship.training.keras_env import tfmot


@dataclass(frozen=True)
class ClusterConfig:
    clusters: int = 16

    def check(self) -> None:
        if self.clusters < 2:
            raise InputError(f"--cluster {self.clusters}: use at least 2 clusters, e.g. 16")


def cluster(model: Any, ctx: PassContext, cfg: ClusterConfig) -> Any:
    """A clustered, stripped copy of ``model``."""
    cfg.check()
    clustering = tfmot().clustering.keras
    params: dict[str, Any] = {
        "number_of_clusters": cfg.clusters,
        "cluster_centroids_init": clustering.CentroidInitialization.KMEANS_PLUS_PLUS,
    }
    if "prune" in ctx.applied:
        params["preserve_sparsity"] = True

    def has_enough_weights(layer: Any) -> bool:
        kernel = next(w for w in layer.weights if w.name.endswith("kernel:0"))
        return kernel.shape.num_elements() > cfg.clusters  # else nothing to share

    wrapped, skipped = wrap_kernel_layers(
        model, lambda layer: clustering.cluster_weights(layer, **params), has_enough_weights)
    if skipped:
        warn(f"clustering left these layers unclustered: {', '.join(skipped)}")
    ctx.notes["cluster_skipped_layers"] = skipped
    fine_tune(wrapped, ctx)
    stripped = clustering.strip_clustering(wrapped)
    settle_batch_norm(stripped, ctx)
    ctx.applied.append("cluster")
    return stripped
