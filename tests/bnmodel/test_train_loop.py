"""The trainer end to end on the CPU: accuracy, outputs, early stopping, divergence, edge sizes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import with_

from bnmodel.checkpoint import load_checkpoint
from bnmodel.data import DataError, validation_split
from bnmodel.train import TrainConfig, TrainingDivergedError, train


@pytest.mark.slow
def test_defaults_reach_95_percent_on_digits(tmp_path: Path) -> None:
    result = train(TrainConfig(out_dir=tmp_path, device="cpu"), progress=False)
    accuracy = result.best_metrics["val_accuracy"]
    assert accuracy >= 0.95 and result.metric == "val_loss"
    # The saved best model, rebuilt from the file alone, scores that on the recorded split.
    ckpt = load_checkpoint(result.best_checkpoint)
    _, val = validation_split(ckpt.data_spec)
    with torch.no_grad():
        pred = ckpt.build_model()(torch.from_numpy(val.features)).argmax(1).numpy()
    assert np.mean(pred == val.targets) == pytest.approx(accuracy)
    assert ckpt.class_labels == [str(i) for i in range(10)] and ckpt.task == "classification"
    assert ckpt.model_config.standardize_input and len(ckpt.feature_names) == 64


def test_writes_metrics_csv_plot_and_checkpoints(tiny_config: TrainConfig) -> None:
    result = train(tiny_config, progress=False)
    rows = list(csv.DictReader(result.metrics_csv.read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr"} <= set(rows[0])
    assert result.plot is not None and result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    last = load_checkpoint(result.last_checkpoint)
    best = load_checkpoint(result.best_checkpoint)
    assert last.epoch == 3 and last.training_state is not None
    assert best.training_state is None and best.epoch == result.best_epoch
    # best.pt holds the lowest validation loss (the default --monitor)
    assert best.metrics["val_loss"] == pytest.approx(result.best_metric)
    assert result.best_metric == min(float(r["val_loss"]) for r in rows)
    assert best.data_spec["source"] == tiny_config.data


def test_steps_drop_a_one_row_tail_batch(tiny_config: TrainConfig) -> None:
    # synthetic:300 -> 240 training rows; batch 239 leaves a tail of 1, which BN cannot take.
    result = train(with_(tiny_config, batch_size=239, epochs=2), progress=False)
    assert [r["step"] for r in result.history] == [1, 2]


def test_too_few_rows_is_a_clear_error(tiny_config: TrainConfig, tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    path.write_text("a,target\n1,0\n")
    with pytest.raises(DataError, match="at least 2"):
        train(with_(tiny_config, data=str(path)), progress=False)


def test_early_stopping_when_nothing_improves(tiny_config: TrainConfig) -> None:
    # No BN and a negligible lr: predictions never change, so patience 1 stops after epoch 2.
    config = with_(
        tiny_config, bn_placement="none", lr=1e-12, schedule="constant", epochs=10, patience=1
    )
    result = train(config, progress=False)
    assert result.stopped_early and len(result.history) == 2 and result.best_epoch == 1


def test_regression_on_csv(tiny_config: TrainConfig, tmp_path: Path, rng) -> None:
    x = rng.normal(size=(200, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.1
    frame = "a,b,c,y\n" + "".join(f"{a},{b},{c},{t}\n" for (a, b, c), t in zip(x, y, strict=True))
    path = tmp_path / "reg.csv"
    path.write_text(frame)
    result = train(with_(tiny_config, data=str(path), target="y", epochs=8), progress=False)
    assert result.metric == "val_loss" and result.task == "regression"
    assert result.history[-1]["val_rmse"] < result.history[0]["val_rmse"]
    assert {"train_rmse", "val_mae", "val_r2"} <= set(result.history[-1])
    assert result.best_metrics["val_r2"] > 0.5  # 40 steps of a tiny model
    assert load_checkpoint(result.best_checkpoint).class_labels is None


def test_nan_loss_stops_with_clear_message(tiny_config: TrainConfig, tmp_path: Path) -> None:
    path = tmp_path / "huge.npz"
    y = 3e38 * (np.arange(40) % 2)[:, None]  # squared errors overflow float32 (raw targets)
    np.savez(path, X=np.ones((40, 2)) + np.arange(40)[:, None], y=y)
    config = with_(tiny_config, data=str(path), task="regression", standardize_target=False)
    with pytest.raises(TrainingDivergedError, match=r"epoch 1: the training loss is (nan|inf)"):
        train(config, progress=False)


def test_recompute_bn_stats_updates_best(tiny_config: TrainConfig) -> None:
    config = with_(tiny_config, recompute_bn_stats=True, monitor="val_accuracy")
    result = train(config, progress=False)
    best = load_checkpoint(result.best_checkpoint)
    assert result.bn_recompute is not None
    assert best.metrics["val_accuracy_before_bn_recompute"] == result.bn_recompute["before"]
    assert best.metrics["val_accuracy"] == result.bn_recompute["after"] == result.best_metric


def test_sync_bn_is_refused_off_cuda(tiny_config: TrainConfig) -> None:
    with pytest.raises(ValueError, match="--sync-bn needs CUDA"):
        train(with_(tiny_config, sync_bn=True), progress=False)


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"batch_size": 1}, "--batch-size"),
        ({"lr": -1.0}, "--lr"),
        ({"epochs": 0}, "--epochs"),
        ({"val_fraction": 1.0}, "--val-fraction"),
        ({"precision": "fp8"}, "--precision"),
        ({"schedule": "step"}, "--schedule"),
        ({"hidden_sizes": ()}, "--hidden"),
    ],
)
def test_config_errors_name_the_flag(change: dict, flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        TrainConfig.from_flags(change)


@pytest.mark.parametrize(
    "options",
    [
        {"optimizer": "sgd", "schedule": "onecycle", "grad_clip": 1.0},
        {"bn_placement": "post", "activation": "gelu", "dropout": 0.2, "bn_momentum": None},
        {"precision": "bf16", "drop_last": True},
    ],
)
def test_option_combinations_train(tiny_config: TrainConfig, options: dict) -> None:
    result = train(with_(tiny_config, epochs=2, **options), progress=False)
    assert len(result.history) == 2 and np.isfinite(result.history[-1]["train_loss"])
