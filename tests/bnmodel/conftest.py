"""Shared helpers for the training-stage tests: small, fast configs on the CPU."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bnmodel.train_config import TrainConfig


@pytest.fixture
def tiny_config(tmp_path: Path) -> TrainConfig:
    """A few-second run on synthetic data; tests replace() what they exercise."""
    return TrainConfig(
        data="synthetic:300,8,3,0",
        hidden_sizes=(16, 16),
        epochs=3,
        batch_size=32,
        device="cpu",
        out_dir=tmp_path / "run",
    )


def with_(config: TrainConfig, **changes: object) -> TrainConfig:
    return replace(config, **changes)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
