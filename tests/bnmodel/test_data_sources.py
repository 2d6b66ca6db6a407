"""Data sources, splits and the bad-data errors (each naming file, column and row)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bnmodel import data
from bnmodel.data import DataError


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_digits() -> None:
    ds = data.load_digits()
    assert ds.features.shape == (1797, 64) and ds.features.dtype == np.float32
    assert ds.targets.dtype == np.int64 and set(ds.targets) == set(range(10))
    assert ds.class_labels == [str(i) for i in range(10)]
    assert len(ds.feature_names) == 64 and ds.task == "classification"


def test_synthetic_is_seeded_and_learnable_shape() -> None:
    a, b = data.make_synthetic(200, 5, 4, seed=3), data.make_synthetic(200, 5, 4, seed=3)
    c = data.make_synthetic(200, 5, 4, seed=4)
    assert np.array_equal(a.features, b.features) and not np.array_equal(a.features, c.features)
    assert a.features.shape == (200, 5) and a.targets.max() < 4 and a.num_outputs == 4
    assert data.load_source(a.source).features.shape == (200, 5)


def test_split_is_seeded_stratified_and_disjoint() -> None:
    ds = data.load_digits()
    train, val = data.split(ds, 0.2, seed=5)
    train2, val2 = data.split(ds, 0.2, seed=5)
    assert np.array_equal(val.features, val2.features)
    assert len(train) + len(val) == len(ds)
    counts = np.bincount(val.targets, minlength=10) / np.bincount(ds.targets)
    assert np.all(np.abs(counts - 0.2) < 0.02)
    _, other = data.split(ds, 0.2, seed=6)
    assert not np.array_equal(val.targets, other.targets)


def test_validation_split_reproduces_the_checkpoint_split(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "d.csv", "a,b,label\n" + "".join(f"{i},{i * 2 % 7},{i % 3}\n" for i in range(30))
    )
    ds = data.load_file(path, "label", None)
    _, val = data.split(ds, 0.3, seed=2)
    spec = data.data_spec(ds, "label", 0.3, seed=2)
    _, again = data.validation_split(spec)
    assert np.array_equal(val.features, again.features)
    assert np.array_equal(val.targets, again.targets)
    path.write_text(path.read_text() + "99,1,0\n")
    with pytest.raises(DataError, match="changed since training"):
        data.validation_split(spec)


def test_csv_classification_with_string_labels(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", "x1,x2,species\n1,2,dog\n3,4,cat\n5,6,cat\n7,8,dog\n")
    ds = data.load_file(path, "species", None)
    assert ds.task == "classification" and ds.class_labels == ["cat", "dog"]
    assert ds.targets.tolist() == [1, 0, 0, 1] and ds.feature_names == ["x1", "x2"]
    assert "strings" in ds.task_reason


def test_csv_regression_inferred_and_parquet(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0, 1, 0], "target": [0.5, 1.25, 2.0]})
    frame.to_parquet(tmp_path / "d.parquet")
    ds = data.load_file(tmp_path / "d.parquet", None, None)
    assert ds.task == "regression" and ds.targets.shape == (3, 1) and ds.class_labels is None
    assert ds.targets.dtype == np.float32 and ds.num_outputs == 1


def test_npz_with_labels(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.savez(
        tmp_path / "d.npz",
        X=np.concatenate([x, x]),
        y=np.array([0, 1, 2, 1, 0, 2, 0, 1]),
        class_labels=np.array(["a", "b", "c"]),
        feature_names=np.array(["p", "q", "r"]),
    )
    ds = data.load_file(tmp_path / "d.npz", None, None)
    assert ds.class_labels == ["a", "b", "c"] and ds.feature_names == ["p", "q", "r"]
    assert ds.features.dtype == np.float32


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("a,b,target\n1,2,0\n3,oops,1\n", r"column 'b', row 2 \(line 3\): 'oops' is not a number"),
        ("a,b,target\n1,inf,0\n3,4,1\n", r"column 'b', row 1 \(line 2\).*not a finite number"),
        (
            "a,b,target\n1,2,0\n3,4,-1\n5,6,0\n",
            r"target column 'target': class '-1' has only 1 row",
        ),
        ("a,b,target\n1,2,4\n3,4,4\n", r"target column 'target': every row holds the same"),
        ("a,b,target\n1,2,0.5\n3,4,0.5\n", r"target column 'target' is constant \(0.5"),
        ("a,b,target\n1,,0\n3,,1\n", r"column 'b' is entirely missing"),
        # a blank target row is dropped and counted; a target blank in every row is an error
        ("a,b,target\n1,2,\n3,4,\n", r"target column 'target' is entirely missing"),
        ("a,b,target\n", r"has a header but no data rows"),
        ("a,b,c\n1,2,3\n", r"no --target given and no column named 'target'"),
    ],
)
def test_bad_csv_errors_name_file_column_row(tmp_path: Path, text: str, pattern: str) -> None:
    path = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(DataError, match=pattern) as info:
        data.load_file(path, None, None)
    assert str(path) in str(info.value)


def test_missing_target_column_and_empty_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", "a,b,target\n1,2,0\n")
    with pytest.raises(DataError, match="target column 'label' does not exist; columns are"):
        data.load_file(path, "label", None)
    empty = write_csv(tmp_path / "empty.csv", "")
    with pytest.raises(DataError, match="empty"):
        data.load_file(empty, None, None)
    with pytest.raises(DataError, match="does not exist"):
        data.load_file(tmp_path / "nope.csv", None, None)
    assert issubclass(DataError, ValueError)


def test_bad_npz_errors(tmp_path: Path) -> None:
    x = np.ones((3, 2))
    x[2, 1] = np.nan
    np.savez(tmp_path / "nan.npz", X=x, y=np.array([0, 1, 0]))
    with pytest.raises(DataError, match=r"nan.npz: array 'X', column 1, row 3"):
        data.load_file(tmp_path / "nan.npz", None, None)
    np.savez(
        tmp_path / "range.npz",
        X=np.ones((3, 2)),
        y=np.array([0, 1, 2]),
        class_labels=np.array(["a", "b"]),
    )
    with pytest.raises(DataError, match=r"row 3: label 2 is out of range for 2 class_labels"):
        data.load_file(tmp_path / "range.npz", None, None)


def test_too_few_rows_to_split() -> None:
    ds = data.make_synthetic(2, 3, 2).subset(np.array([0]))
    with pytest.raises(DataError, match="1 row"):
        data.split(ds, 0.2, seed=0)


def _integer_table(tmp_path: Path, labels: list[int]) -> Path:
    rows = "".join(f"{i},{label}\n" for i, label in enumerate(labels))
    return write_csv(tmp_path / "ints.csv", "x,y\n" + rows)


@pytest.mark.parametrize(
    ("labels", "task", "classes"),
    [
        ([1, 2, 3] * 5, "classification", ["1", "2", "3"]),  # no phantom class 0
        ([0, 10, 20] * 5, "classification", ["0", "10", "20"]),  # 3 classes, not 21
        ([7, 9, 7, 9], "classification", ["7", "9"]),  # two values: always classes
        (list(range(25, 347, 3)), "regression", None),  # many distinct values: a quantity
    ],
)
def test_integer_targets_follow_the_stated_rule(
    tmp_path: Path, labels: list[int], task: str, classes: list[str] | None
) -> None:
    ds = data.load_file(_integer_table(tmp_path, labels), "y", None)
    assert ds.task == task and ds.class_labels == classes and ds.task_reason
    if classes is not None:  # indices 0..K-1 in sorted label order
        assert sorted(set(ds.targets.tolist())) == list(range(len(classes)))


def test_ambiguous_integer_target_asks_for_task(tmp_path: Path) -> None:
    path = _integer_table(tmp_path, [1, 2, 3] * 5 + [4, 4])
    with pytest.raises(DataError, match=r"value 4 in only 2 row\(s\); pass --task"):
        data.load_file(path, "y", None)
    assert data.load_file(path, "y", "regression").task == "regression"


def test_unseen_label_is_named_with_its_row_count() -> None:
    codes = data.encode_labels(np.array(["b", "a"], dtype=object), ["a", "b"], "test.csv")
    assert codes.tolist() == [1, 0]
    with pytest.raises(
        DataError, match=r"test.csv: label\(s\) never seen in training: 'z' \(2 rows\)"
    ):
        data.encode_labels(np.array(["a", "z", "z"], dtype=object), ["a", "b"], "test.csv")


def test_constant_multi_target_column_is_named(tmp_path: Path) -> None:
    y = np.stack([np.arange(6.0), np.full(6, 2.5)], axis=1)
    np.savez(tmp_path / "two.npz", X=np.arange(12.0).reshape(6, 2), y=y)
    with pytest.raises(DataError, match=r"array 'y', target column 1 is constant \(2.5"):
        data.load_file(tmp_path / "two.npz", None, None)
