"""Training on a user's table: summary, monitor, test rows, resume from last.pt, run folders."""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from conftest import with_

from bnmodel.checkpoint import load_checkpoint
from bnmodel.cli import main
from bnmodel.config import ModelConfig
from bnmodel.data import DataError, validation_split
from bnmodel.train import TrainConfig, train
from bnmodel.train_cli import _report


@pytest.fixture
def table(tmp_path: Path) -> Path:
    """120 rows, two numeric features, string labels that sort differently from their order."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 2))
    labels = np.where(x[:, 0] + 0.3 * x[:, 1] > 0, "zebra", "ant")
    path = tmp_path / "animals.csv"
    rows = "".join(f"{a:.4f},{b:.4f},{y}\n" for (a, b), y in zip(x, labels, strict=True))
    path.write_text("f1,f2,kind\n" + rows)
    return path


def _config(table: Path, tmp_path: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(
        data=str(table),
        target="kind",
        model=ModelConfig(hidden_sizes=(8,)),
        epochs=3,
        batch_size=16,
        device="cpu",
        out_dir=tmp_path / "run",
    )
    return with_(base, **changes)


def test_data_json_and_test_fraction(table: Path, tmp_path: Path) -> None:
    result = train(_config(table, tmp_path, test_fraction=0.25), progress=False)
    summary = json.loads((result.out_dir / "data.json").read_text())
    assert summary["task"] == "classification" and "strings" in summary["task_reason"]
    assert set(summary["classes"]) == {"ant", "zebra"} and sum(summary["classes"].values()) == 120
    assert summary["splits"] == {"train": 66, "validation": 24, "test": 30}
    assert len(summary["sha256"]) == 64 and summary["features"] == ["f1", "f2"]
    test = json.loads((result.out_dir / "test_metrics.json").read_text())
    assert test["rows"] == 30 and 0 <= test["test_accuracy"] <= 1
    assert result.test_metrics == {k: v for k, v in test.items() if k.startswith("test_")}
    # Export re-reads the same validation rows, test rows excluded.
    ckpt = load_checkpoint(result.best_checkpoint)
    assert len(validation_split(ckpt.data_spec)[1]) == 24
    assert ckpt.class_labels == ["ant", "zebra"] and ckpt.target_name == "kind"


def test_test_file_with_an_unseen_label_is_named(table: Path, tmp_path: Path) -> None:
    other = tmp_path / "test.csv"
    other.write_text("f1,f2,kind\n0.1,0.2,ant\n0.3,0.1,bee\n0.5,0.5,bee\n")
    with pytest.raises(DataError, match=r"never seen in training: 'bee' \(2 rows\)"):
        train(_config(table, tmp_path, test=str(other)), progress=False)


def test_monitor_accuracy_breaks_ties_by_validation_loss(table: Path, tmp_path: Path) -> None:
    result = train(_config(table, tmp_path, monitor="val_accuracy", epochs=6), progress=False)
    rows = result.history
    best = max(rows, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    assert result.best_epoch == best["epoch"] and result.metric == "val_accuracy"
    with pytest.raises(ValueError, match="--monitor val_rmse needs a regression task"):
        train(_config(table, tmp_path, monitor="val_rmse", overwrite=True), progress=False)


def _cli(table: Path, out: Path, *more: str) -> list[str]:
    flags = ["--data", str(table), "--target", "kind", "--hidden", "8", "--batch-size", "16"]
    return [
        "train",
        *flags,
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(out),
        *more,
    ]


def test_resume_from_last_pt_alone_restores_flags_and_says_how_epochs_extend(
    table: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(_cli(table, out)) == 0
    first = list(csv.DictReader((out / "metrics.csv").open()))
    capsys.readouterr()
    assert main(["train", "--resume", str(out / "last.pt"), "--epochs", "4", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "--epochs 4 extends the 2-epoch plan: epochs 3-4 run a new cosine cycle" in printed
    last = load_checkpoint(out / "last.pt")
    assert last.epoch == 4 and last.model_config.hidden_sizes == (8,)  # not the default 256
    assert last.training_state["train_config"]["target"] == "kind"
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["lr"] for r in rows[:2]] == [r["lr"] for r in first]  # the plan is not restretched
    # The announced restart: mid-cycle, not the end of the old plan (~0) stretched on.
    assert 0.4 * 3e-3 < float(rows[2]["lr"]) < 3e-3


def test_resume_refuses_an_unsafe_override(table: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(_cli(table, out)) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(out / "last.pt"), "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.1 differs from the resumed run's 0.003" in err and err.count("\n") == 1


def test_ctrl_c_hint_works_as_printed(table: Path, tmp_path: Path, capsys) -> None:
    import os
    import signal

    def interrupt(step: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    result = train(_config(table, tmp_path), progress=False, on_step=interrupt)
    assert result.interrupted and _report(result) == 130
    hint = capsys.readouterr().err.split("Continue with: ")[1].strip()
    argv = shlex.split(hint)
    assert argv[:2] == ["bnmodel", "train"]
    assert main(argv[1:]) == 0
    assert load_checkpoint(result.last_checkpoint).epoch == 3


def test_run_folder_safety(table: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(_cli(table, out)) == 0
    capsys.readouterr()
    assert main(_cli(table, out)) == 2
    assert (
        "holds an earlier run (last.pt, best.pt, metrics.csv, data.json)" in capsys.readouterr().err
    )
    (out / "test_metrics.json").write_text("{}")  # from an older run with test rows
    assert main(_cli(table, out, "--overwrite")) == 0
    assert not (out / "test_metrics.json").exists()  # nothing stale beside the new run
    capsys.readouterr()
    assert main(_cli(table, table)) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(_cli(table, table / "sub")) == 2
    assert "is not writable" in capsys.readouterr().err


def test_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    from bnmodel.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["train"]
    for action in sub._actions:
        if action.option_strings and action.dest not in ("help",) and action.help:
            text = sub._get_formatter()._expand_help(action)
            store_false = action.default is True and action.const is False
            assert "default" in text or store_false, action.option_strings
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "(default: True)" not in capsys.readouterr().out


@pytest.mark.slow
def test_diabetes_with_defaults_is_within_10_percent_of_ridge(tmp_path: Path) -> None:
    """The bar: only --data/--target, held-out RMSE within 10% of RidgeCV's."""
    import torch
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import train_test_split

    frame = load_diabetes(as_frame=True).frame
    frame["target"] = frame["target"].astype(int)  # 25..346: must not become 347 classes
    train_rows, test_rows = train_test_split(frame, test_size=0.2, random_state=0)
    train_rows.to_csv(tmp_path / "train.csv", index=False)
    result = train(
        TrainConfig(data=str(tmp_path / "train.csv"), target="target", out_dir=tmp_path / "run"),
        progress=False,
    )
    assert result.task == "regression"
    x = np.array(test_rows.drop(columns="target"), dtype=np.float32)
    y = test_rows["target"].to_numpy()
    with torch.no_grad():
        ours = load_checkpoint(result.best_checkpoint).build_model()(torch.from_numpy(x))
    ours_rmse = float(np.sqrt(np.mean((ours.numpy()[:, 0] - y) ** 2)))
    ridge = RidgeCV(alphas=np.logspace(-3, 3, 20)).fit(
        train_rows.drop(columns="target"), train_rows["target"]
    )
    ridge_rmse = float(np.sqrt(np.mean((ridge.predict(test_rows.drop(columns="target")) - y) ** 2)))
    assert ours_rmse <= 1.1 * ridge_rmse, (ours_rmse, ridge_rmse)
