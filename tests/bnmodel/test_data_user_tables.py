"""What users' tables hold: blank targets, columns to drop, id-like columns, float class codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import with_

from bnmodel.data import DataError, blank_target_mask, load_file
from bnmodel.train import TrainConfig, train


def _table(tmp_path: Path, n: int = 200) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "row": np.arange(1, n + 1),
            "a": rng.normal(size=n),
            "color": rng.choice(["red", "blue", "green"], n),
            "user": [f"u{i:04d}" for i in range(n)],
            "y": rng.choice(["yes", "no"], n),
        }
    )
    frame.loc[[3, 50, 77], "y"] = None
    path = tmp_path / "users.csv"
    frame.to_csv(path, index=False)
    return path


def test_blank_targets_are_dropped_and_counted(tmp_path: Path) -> None:
    path = _table(tmp_path)
    ds = load_file(path, "y", drop=("user",))
    assert len(ds) == 197 and ds.blank_target_rows == 3
    assert ds.categories.shape == (197, 1)  # the CSV's text re-read, the same rows dropped
    # row 4 (index 3) is gone: the next row's text and number follow directly.
    assert ds.features[3, 0] == 5.0
    frame = pd.read_csv(path)
    keep = blank_target_mask(frame, ["y"])
    assert keep is not None and int((~keep).sum()) == 3
    assert blank_target_mask(frame.dropna(subset=["y"]), ["y"]) is None


def test_drop_leaves_columns_out_and_names_unknown_ones(tmp_path: Path) -> None:
    path = _table(tmp_path)
    ds = load_file(path, "y", drop=("user", "row"))
    assert ds.feature_names == ["a"] and ds.categorical_names == ["color"]
    with pytest.raises(DataError, match=r"--drop column 'nope' does not exist; columns are \["):
        load_file(path, "y", drop=("nope",))
    with pytest.raises(DataError, match="--drop column 'y' is the target"):
        load_file(path, "y", drop=("y",))


def test_id_like_columns_are_warned_about(tmp_path: Path) -> None:
    ds = load_file(_table(tmp_path), "y", categorical=("user",), drop=())
    text = " ".join(ds.warnings)
    assert "column 'row' looks like a row id" in text and "--drop row" in text
    assert "column 'user' looks like a row id" in text
    assert "'a'" not in text and "'color'" not in text


def test_float_class_codes_get_the_task_hint(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=100), "y": rng.integers(0, 7, 100).astype(float)})
    frame.to_csv(tmp_path / "codes.csv", index=False)
    ds = load_file(tmp_path / "codes.csv", "y")
    assert ds.task == "regression"
    assert "7 distinct whole values (0 .. 6); pass --task classification" in ds.task_reason
    frame["y"] += 0.5
    frame.to_csv(tmp_path / "real.csv", index=False)
    assert "--task" not in load_file(tmp_path / "real.csv", "y").task_reason


def test_train_reports_blank_targets_and_dropped_columns(
    tiny_config: TrainConfig, tmp_path: Path
) -> None:
    config = with_(tiny_config, data=str(_table(tmp_path)), target="y", drop=("user",), epochs=1)
    train(config, progress=False)
    summary = json.loads((config.out_dir / "data.json").read_text())
    assert summary["blank_target_rows"] == 3 and summary["rows"] == 197
    assert summary["dropped"] == ["3 rows with a blank target"]
    assert summary["dropped_columns"] == ["user"] and "user" not in summary["features"]
    assert any("'row' looks like a row id" in w for w in summary["warnings"])


def _dated(n: int = 40) -> pd.DataFrame:
    start = pd.Timestamp("2024-01-01")
    return pd.DataFrame(
        {
            "when": [start + pd.Timedelta(hours=7 * i) for i in range(n)],
            "a": np.linspace(0, 1, n),
            "target": [i % 2 for i in range(n)],
        }
    )


@pytest.mark.parametrize("form", ["iso-date", "iso-datetime", "parquet-timestamp", "parquet-date"])
def test_date_columns_become_seconds_in_every_form(tmp_path: Path, form: str) -> None:
    frame = _dated()
    expected = (frame["when"] - pd.Timestamp("1970-01-01")).dt.total_seconds().to_numpy()
    if form == "iso-date":
        frame["when"] = frame["when"].dt.strftime("%Y-%m-%d")
        expected = np.floor(expected / 86400) * 86400
    elif form == "iso-datetime":
        frame["when"] = frame["when"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    elif form == "parquet-date":
        frame["when"] = frame["when"].dt.date
        expected = np.floor(expected / 86400) * 86400
    path = tmp_path / ("t.csv" if form.startswith("iso") else "t.parquet")
    frame.to_csv(path, index=False) if path.suffix == ".csv" else frame.to_parquet(path)
    ds = load_file(path)
    assert ds.date_names == ["when"] and ds.feature_names == ["a"] and ds.needs_encoding
    np.testing.assert_array_equal(ds.dates[:, 0], expected)
    assert load_file(path, drop=("when",)).date_names == []


def test_a_date_column_with_a_stray_word_names_the_cell(tmp_path: Path) -> None:
    frame = _dated()
    frame["when"] = frame["when"].dt.strftime("%Y-%m-%d").astype(object)
    frame.loc[30, "when"] = "soon"
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"column 'when', row 31 \(line 32\): 'soon' is not a date"):
        load_file(path)


def test_blank_targets_a_date_and_an_id_train_with_default_flags(tmp_path: Path) -> None:
    """Each is said: rows dropped, the date's features, the id warned about; and the date
    features carry the signal (the target is the weekend)."""
    n = 600
    when = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(n) * 9.5, unit="h")
    frame = pd.DataFrame(
        {
            "id": np.arange(n),
            "a": np.random.default_rng(0).normal(size=n),
            "when": when.strftime("%Y-%m-%d %H:%M"),
            "y": np.where(when.dayofweek >= 5, "weekend", "weekday"),
        }
    )
    frame.loc[[5, 9], "when"] = ""
    frame.loc[[3, 70, 71], "y"] = None
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    result = train(TrainConfig(data=str(path), target="y", out_dir=tmp_path / "run", device="cpu"))
    summary = json.loads((tmp_path / "run" / "data.json").read_text())
    assert summary["blank_target_rows"] == 3
    assert summary["dates"]["when"]["missing_cells"] == 2
    assert summary["dates"]["when"]["features"][2] == "when.weekday"
    assert any("'id' looks like a row id" in w for w in summary["warnings"])
    assert result.best_metrics["val_accuracy"] > 0.9  # weekday is a feature; 'a' is noise


def test_text_that_only_starts_like_a_date_is_categorical(tmp_path: Path) -> None:
    frame = _dated()
    frame["when"] = [f"2024-01-0{i % 3 + 1} shift {i % 2}" for i in range(len(frame))]
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    assert load_file(path).categorical_names == ["when"]
    # Named as categorical, a date column is taken as the user asked.
    frame["when"] = [f"2024-01-0{i % 3 + 1}" for i in range(len(frame))]
    frame.to_csv(path, index=False)
    assert load_file(path, categorical=("when",)).categorical_names == ["when"]
