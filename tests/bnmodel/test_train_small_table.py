"""Small tables: early stopping on by default, and best.pt never from the first epochs."""

from __future__ import annotations

import json

from conftest import with_

from bnmodel.checkpoint import load_checkpoint
from bnmodel.train import SMALL_TABLE_PATIENCE, TrainConfig, train


def test_small_table_turns_on_early_stopping_and_skips_early_epochs(
    tiny_config: TrainConfig,
) -> None:
    # Epochs 1-3 of 12 (the first quarter) are never best.pt, whatever their loss.
    config = with_(tiny_config, epochs=12)
    result = train(config, progress=False)
    assert result.best_epoch >= 12 // 4 + 1
    summary = json.loads((config.out_dir / "data.json").read_text())
    assert f"--patience {SMALL_TABLE_PATIENCE}" in summary["early_stopping"]
    state = load_checkpoint(config.out_dir / "last.pt").training_state
    assert state["train_config"]["patience"] == SMALL_TABLE_PATIENCE


def test_explicit_patience_is_kept_and_not_reported(tiny_config: TrainConfig) -> None:
    config = with_(tiny_config, epochs=3, patience=10)
    result = train(config, progress=False)
    assert result.epochs_run == 3
    assert "early_stopping" not in json.loads((config.out_dir / "data.json").read_text())
