"""Ctrl-C saves a checkpoint; --resume continues exactly where an uninterrupted run would be."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import with_

from bnmodel.checkpoint import load_checkpoint
from bnmodel.train import ResumeError, TrainConfig, train


def interrupt_at(step: int):
    def on_step(global_step: int) -> None:
        if global_step == step:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered to our handler

    return on_step


def test_interrupt_mid_epoch_then_resume_is_exact(tiny_config: TrainConfig, tmp_path: Path):
    # Dropout and a cosine schedule make the RNG and step count matter; 8 steps per epoch.
    config = with_(tiny_config, deterministic=True, dropout=0.2, epochs=3)
    full = train(with_(config, out_dir=tmp_path / "full"), progress=False)

    cut = with_(config, out_dir=tmp_path / "cut")
    first = train(cut, progress=False, on_step=interrupt_at(12))  # in the middle of epoch 2
    assert first.interrupted and len(first.history) == 1
    saved = load_checkpoint(first.last_checkpoint)
    assert saved.training_state["global_step"] == 12 and saved.training_state["partial"]

    resumed = train(with_(cut, resume=first.last_checkpoint), progress=False)
    a = load_checkpoint(full.last_checkpoint).model_state
    b = load_checkpoint(resumed.last_checkpoint).model_state
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for row_a, row_b in zip(full.history, resumed.history, strict=True):
        assert row_a["train_loss"] == row_b["train_loss"]
        assert row_a["val_accuracy"] == row_b["val_accuracy"]


def test_resume_refuses_best_and_other_models(tiny_config: TrainConfig) -> None:
    result = train(with_(tiny_config, epochs=1), progress=False)
    with pytest.raises(ResumeError, match="no training state"):
        train(with_(tiny_config, resume=result.best_checkpoint), progress=False)
    with pytest.raises(ResumeError, match="pass the same model flags"):
        train(with_(tiny_config, hidden_sizes=(8,), resume=result.last_checkpoint), progress=False)


def test_resume_extends_a_finished_run(tiny_config: TrainConfig) -> None:
    result = train(with_(tiny_config, epochs=1, schedule="constant"), progress=False)
    more = train(
        with_(tiny_config, epochs=2, schedule="constant", resume=result.last_checkpoint),
        progress=False,
    )
    assert [r["epoch"] for r in more.history] == [1, 2]
