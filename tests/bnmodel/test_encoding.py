"""Raw tables: categorical vocabularies, imputation, indicators, and the model's Encode layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bnmodel import data
from bnmodel.config import ModelConfig
from bnmodel.data import DataError
from bnmodel.encoding import EncodingError, Preprocessing, category_text, fit_preprocessing
from bnmodel.model import BNMLP, Encode

NAN = np.nan


def _fit(**kwargs: object) -> Preprocessing:
    numeric = np.array([[1.0, 5.0], [NAN, 5.0], [3.0, 7.0], [10.0, 9.0]], np.float32)
    cats = np.array([["b"], ["a"], ["b"], [""]], dtype=object)
    return fit_preprocessing(numeric, ["x", "y"], cats, ["c"], **kwargs)


def test_vocabulary_imputation_and_indicators() -> None:
    prep = _fit()
    assert prep.vocabularies == (("b", "a"),)  # most frequent first, the blank never a value
    assert prep.category_sizes == (3,)  # b, a, other
    assert prep.impute_values == pytest.approx((14 / 3, 6.5))  # training means, NaN ignored
    assert prep.indicators == ("x",) and prep.indicator_index == (0,)  # only x had a blank
    assert _fit(impute="median").impute_values == pytest.approx((3.0, 6.0))
    assert _fit(indicators=False).indicators == ()


def test_rare_unseen_and_blank_values_share_the_other_slot() -> None:
    prep = _fit(min_count=2)
    assert prep.vocabularies == (("b",),)
    codes = prep.codes(np.array([["b"], ["a"], [""], ["never seen"]], dtype=object))
    assert codes[:, 0].tolist() == [0, 1, 1, 1]
    assert _fit(max_size=1).vocabularies == (("b",),)
    x = prep.model_input(np.array([[NAN, 1.0]]), np.array([["zzz"]], dtype=object))
    assert x.dtype == np.float32 and np.isnan(x[0, 0]) and x[0, 2] == 1.0


def test_round_trip_and_errors() -> None:
    prep = _fit()
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    with pytest.raises(EncodingError, match="column 'c': no value occurs in at least 9"):
        _fit(min_count=9)
    with pytest.raises(EncodingError, match="numeric column 'x' is missing in every"):
        fit_preprocessing(np.full((2, 1), NAN), ["x"], None, [])
    with pytest.raises(EncodingError, match="--impute must be"):
        _fit(impute="mode")


def test_category_text_matches_arrow_cast() -> None:
    assert category_text(pd.Series([True, False, None])).tolist() == ["true", "false", ""]
    assert category_text(pd.Series(["a", None], dtype="category")).tolist() == ["a", ""]
    assert category_text(pd.Series([3, 4])).tolist() == ["3", "4"]


def test_encode_layer_imputes_indicates_and_one_hots() -> None:
    encode = Encode(2, (1,), (3, 2), embedding_dim=0)
    encode.impute.copy_(torch.tensor([7.0, 8.0]))
    x = torch.tensor([[1.0, NAN, 2.0, 0.0], [NAN, 4.0, 0.0, 1.0]])
    out = encode(x)
    expected = [[1, 8, 1, 0, 0, 1, 1, 0], [7, 4, 0, 1, 0, 0, 0, 1]]
    assert out.tolist() == expected
    embedded = Encode(2, (), (3, 2), embedding_dim=4)(x)
    assert embedded.shape == (2, 2 + 4 + 4)


def test_model_config_widths() -> None:
    config = ModelConfig(
        in_features=2,
        out_features=3,
        hidden_sizes=(8,),
        impute_missing=True,
        indicator_columns=(1,),
        category_sizes=(3, 2),
    )
    model = BNMLP(config)
    assert isinstance(model.encode, Encode) and model.standardize.mean.numel() == 8
    assert model(torch.zeros(5, 4)).shape == (5, 3)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="--embedding-dim must be >= 0"):
        ModelConfig(embedding_dim=-1)


# --------------------------------------------------------------------------------------------
# Tables


def _table(tmp_path: Path, suffix: str = ".csv") -> Path:
    frame = pd.DataFrame(
        {
            "size": [1.0, NAN, 3.0, 4.0, 5.0, 6.0],
            "color": ["red", "blue", "", "red", "true", "blue"],
            "flag": [True, False, True, True, False, False],
            "code": [10, 20, 10, 30, 20, 10],
            "target": ["yes", "no", "yes", "no", "yes", "no"],
        }
    )
    path = tmp_path / f"t{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame["color"] = frame["color"].replace("", None).astype("category")
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_tables_split_numeric_and_categorical_columns(tmp_path: Path, suffix: str) -> None:
    ds = data.load_file(_table(tmp_path, suffix), categorical=("code",))
    assert ds.feature_names == ["size"]
    assert ds.categorical_names == ["color", "flag", "code"]
    assert np.isnan(ds.features[1, 0]) and ds.needs_encoding
    assert ds.categories[2].tolist()[0] == ""  # a blank cell is missing
    assert ds.categories[:, 2].tolist() == ["10", "20", "10", "30", "20", "10"]
    # Bool spellings are one text whatever the format: a CSV's "true", Parquet's bool True.
    assert ds.subset(np.array([4])).categories.tolist() == [["True", "False", "20"]]


def test_csv_categorical_text_is_kept_as_written(tmp_path: Path) -> None:
    """Text as written ("007" is not "7"), but the bool spellings true/True/TRUE are one."""
    path = tmp_path / "t.csv"
    path.write_text("b,c,target\nTrue,007,0\nfalse,7,1\nTRUE,007,0\nfalse,7,1\n")
    ds = data.load_file(path, categorical=("c",))
    assert ds.categories.tolist() == [["True", "007"], ["False", "7"], ["True", "007"]] + [
        ["False", "7"]
    ]


@pytest.mark.parametrize(
    ("text", "categorical", "pattern"),
    [
        ("a,features,target\n1,x,0\n2,y,1\n", (), "may not be named 'features'"),
        ("a,b,target\n1,x,0\n2,y,1\n", ("zz",), "--categorical column 'zz' does not exist"),
        ("a,b,target\n1,x,0\n2,y,1\n", ("target",), "--categorical column 'target' is the"),
        (
            "a,b,target\n1,2,0\n2,3,1\n3,oops,0\n",
            (),
            r"column 'b', row 3 \(line 4\): 'oops' is not a number, but 67%.*--categorical b",
        ),
    ],
)
def test_table_column_errors(tmp_path: Path, text: str, categorical: tuple, pattern: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=pattern):
        data.load_file(path, categorical=categorical)


def test_train_cli_flags_reach_the_checkpoint(tmp_path: Path) -> None:
    import json

    from bnmodel.checkpoint import load_checkpoint
    from bnmodel.cli import main

    rng = np.random.default_rng(0)
    n = 120
    frame = pd.DataFrame(
        {
            "x": np.where(rng.random(n) < 0.2, NAN, rng.normal(size=n)),
            "code": rng.integers(0, 4, n),
            "color": rng.choice(["red", "blue", "green", "rare"], n, p=[0.4, 0.3, 0.28, 0.02]),
            "target": rng.integers(0, 2, n),
        }
    )
    frame.to_csv(tmp_path / "d.csv", index=False)
    args = ["train", "--data", str(tmp_path / "d.csv"), "--out", str(tmp_path / "run")]
    args += ["--epochs", "2", "--hidden", "8", "--quiet", "--categorical", "code"]
    args += ["--embedding-dim", "2", "--impute", "median", "--no-missing-indicators"]
    args += ["--min-category-count", "5", "--max-categories", "2"]
    assert main(args) == 0
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    prep = Preprocessing.from_dict(ckpt.preprocessing)
    assert prep.categorical == ("code", "color") and prep.impute == "median"
    assert prep.indicators == () and all(len(v) == 2 for v in prep.vocabularies)
    assert "rare" not in prep.vocabularies[1]
    assert ckpt.model_config.embedding_dim == 2 and ckpt.model_config.category_sizes == (3, 3)
    assert ckpt.data_spec["categorical"] == ["code"]
    summary = json.loads((tmp_path / "run" / "data.json").read_text())
    assert summary["categorical"] == ["code", "color"] and summary["missing_cells"]["x"] > 0
