"""Shared helpers for the training-stage tests: small, fast configs on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bnmodel.config import ModelConfig
from bnmodel.train_config import TrainConfig


@pytest.fixture
def tiny_config(tmp_path: Path) -> TrainConfig:
    """A few-second run on synthetic data; tests replace() what they exercise."""
    return TrainConfig(
        data="synthetic:300,8,3,0",
        model=ModelConfig(hidden_sizes=(16, 16)),
        epochs=3,
        batch_size=32,
        device="cpu",
        out_dir=tmp_path / "run",
    )


def with_(config: TrainConfig, **changes: object) -> TrainConfig:
    """A copy with flag-named changes (model fields such as hidden_sizes included)."""
    return TrainConfig.from_flags({**config.to_flags(), **changes})


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
