"""Training from a table in memory (TrainConfig(data=DataFrame)), and with out_dir=None without
writing anything: the path the scikit-learn estimators take."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bnmodel.checkpoint import load_checkpoint
from bnmodel.data import FRAME_SOURCE, dataset_from_frame, load_file, load_source
from bnmodel.train import train
from bnmodel.train_config import TrainConfig


@pytest.fixture
def table(tmp_path: Path) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 120
    frame = pd.DataFrame(
        {
            "size": rng.normal(size=n),
            "colour": rng.choice(["red", "green", "blue"], size=n).astype(object),
            "weight": rng.normal(size=n),
        }
    )
    frame.loc[::6, "colour"] = None
    frame.loc[::5, "weight"] = np.nan
    frame["label"] = np.where(frame["size"] + (frame["colour"] == "red") > 0.5, "yes", "no")
    frame.to_csv(tmp_path / "table.csv", index=False)
    return frame


def test_a_frame_reads_as_its_csv_does(table: pd.DataFrame, tmp_path: Path) -> None:
    from_file = load_file(tmp_path / "table.csv", "label")
    from_frame = load_source(table, "label")
    assert from_frame.source == FRAME_SOURCE
    assert from_frame.feature_names == from_file.feature_names == ["size", "weight"]
    assert from_frame.categorical_names == ["colour"]
    assert np.array_equal(from_frame.features, from_file.features, equal_nan=True)
    assert (from_frame.categories == from_file.categories).all()
    assert from_frame.class_labels == ["no", "yes"]
    assert np.array_equal(from_frame.targets, from_file.targets)
    with pytest.raises(ValueError, match=r"data file <DataFrame>: target column 'nope'"):
        dataset_from_frame(table, target="nope")


def test_in_memory_run_writes_nothing(
    table: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.iterdir())
    config = TrainConfig(data=table, target="label", epochs=3, device="cpu", out_dir=None)
    result = train(config, progress=False)
    assert sorted(tmp_path.iterdir()) == before
    assert result.best_checkpoint is None and result.metrics_csv is None and result.plot is None
    assert result.best is not None and result.best.epoch == result.best_epoch
    assert result.best.preprocessing["categorical"] == ["colour"]
    assert result.best.data_spec["source"] == FRAME_SOURCE


def test_a_frame_with_a_run_folder_writes_a_loadable_run(
    table: pd.DataFrame, tmp_path: Path
) -> None:
    import pyarrow as pa

    out = tmp_path / "run"
    config = TrainConfig(data=pa.Table.from_pandas(table), target="label", epochs=2, out_dir=out)
    result = train(config, progress=False)
    last = load_checkpoint(result.last_checkpoint)  # weights_only: no DataFrame inside
    assert last.training_state["train_config"]["data"] == "<Table of 120 rows, 4 columns>"
    best = load_checkpoint(out / "best.pt")
    for key, value in best.model_state.items():
        assert np.array_equal(value.numpy(), result.best.model_state[key].numpy()), key
