"""Shared fixtures: tiny real models and runs, made once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from edgeship.core.runstore import RunDir, RunStore


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """A real CNN trained briefly on digits: the run later stages start from."""
    from edgeship.training.stage import TrainConfig, train

    store = RunStore(tmp_path_factory.mktemp("digits-runs"))
    return train(store, TrainConfig(epochs=12, patience=4, seed=0)).run


@pytest.fixture(scope="session")
def tabular_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """A real MLP trained briefly on the wine table."""
    from edgeship.training.stage import TrainConfig, train

    store = RunStore(tmp_path_factory.mktemp("wine-runs"))
    return train(store, TrainConfig(dataset="wine", epochs=40, patience=8, seed=0)).run


@pytest.fixture()
def runs_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"
