"""Weight clustering with tfmot: each kernel keeps at most N distinct values.

N shared values compress well and are what a palette-based format would store; after
pruning, clustering keeps the zeros (sparsity-preserving clustering).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compression.base import PassContext, clone, fine_tune
from edgeship.console import warn
from edgeship.errors import InputError
from training.keras_env import keras, tfmot


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
    skipped: list[str] = []

    def wrap(layer: Any) -> Any:
        k = keras()
        if hasattr(layer, "layers") and layer.weights:
            skipped.append(layer.name)
            return layer
        if not isinstance(layer, k.layers.Dense | k.layers.Conv2D | k.layers.DepthwiseConv2D |
                          k.layers.Conv1D):
            return layer
        kernel_size = next(w for w in layer.weights if w.name.endswith("kernel:0")).shape.num_elements()
        if kernel_size <= cfg.clusters:
            skipped.append(layer.name)  # fewer weights than clusters: nothing to share
            return layer
        try:
            return clustering.cluster_weights(layer, **params)
        except (ValueError, TypeError):
            skipped.append(layer.name)
            return layer

    copy = clone(model)
    wrapped = keras().models.clone_model(copy, clone_function=wrap)
    if skipped:
        warn(f"clustering left these layers unclustered: {', '.join(skipped)}")
    ctx.notes["cluster_skipped_layers"] = skipped
    fine_tune(wrapped, ctx)
    stripped = clustering.strip_clustering(wrapped)
    ctx.applied.append("cluster")
    return stripped
