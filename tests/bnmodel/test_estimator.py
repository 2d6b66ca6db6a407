"""The scikit-learn estimators: scikit-learn's own checks, DataFrames with words and blanks,
model selection, pickling, determinism, export, and one implementation with the command."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_diabetes, load_wine
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import bnmodel
from bnmodel import BNMLPClassifier, BNMLPRegressor
from bnmodel.checkpoint import load_checkpoint
from bnmodel.cli import main
from bnmodel.estimator import PARAMETERS
from bnmodel.predict import PredictError
from bnmodel.train_config import TrainConfig

FAST = {"hidden": (32,), "epochs": 20, "device": "cpu"}


# scikit-learn's checks, every one: none is skipped or expected to fail. (check_array_api_input
# skips itself unless SCIPY_ARRAY_API=1 is set: the estimators take numpy and pandas input.)
@parametrize_with_checks([BNMLPClassifier(**FAST), BNMLPRegressor(**FAST)])
def test_scikit_learn_checks(estimator, check) -> None:
    check(estimator)


def wine_words() -> tuple[pd.DataFrame, pd.Series]:
    """wine with a column of words (with blanks) and missing numbers, as users' tables come."""
    data = load_wine(as_frame=True)
    x = data.data.copy()
    x["colour"] = np.where(x["color_intensity"] > 5, "dark", "pale").astype(object)
    x.loc[::9, "colour"] = None
    x.loc[::7, "malic_acid"] = np.nan
    y = data.target.map(dict(enumerate(data.target_names))).rename("cultivar")
    return x, y


def test_defaults_are_the_commands() -> None:
    flags = TrainConfig().to_flags()
    for estimator in (BNMLPClassifier(), BNMLPRegressor()):
        params = estimator.get_params()
        for name, flag in PARAMETERS.items():
            default = flags[flag]
            value = params[name]
            if name == "random_state":
                assert value == flags["seed"]
            else:
                assert value == (tuple(default) if isinstance(default, list) else default), name
        assert params["verbose"] is False  # quiet in notebooks; bnmodel train shows progress


def test_fits_a_dataframe_with_words_and_blanks(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    x, y = wine_words()
    clf = BNMLPClassifier(epochs=15, device="cpu").fit(x, y)
    assert list(tmp_path.iterdir()) == []  # trained in memory: no run folder, no files
    assert list(clf.classes_) == ["class_0", "class_1", "class_2"]
    assert clf.n_features_in_ == 14 and list(clf.feature_names_in_) == list(x.columns)
    assert clf.score(x, y) > 0.9
    assert set(clf.predict(x)) <= set(clf.classes_)
    proba = clf.predict_proba(x)
    assert proba.shape == (178, 3) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    prep = clf.checkpoint_.preprocessing
    assert prep["categorical"] == ["colour"] and "malic_acid" in prep["indicators"]
    assert clf.checkpoint_.target_name == "cultivar" and 1 <= clf.best_epoch_ <= clf.n_iter_


def test_the_command_and_the_estimator_train_the_same_model(tmp_path: Path) -> None:
    """One implementation: the same table, flags and seed give bit-identical weights."""
    x, y = wine_words()
    table = x.assign(target=y.to_numpy())
    table.to_csv(tmp_path / "wine.csv", index=False)
    flags = ["--hidden", "16", "--epochs", "4", "--device", "cpu", "--seed", "3", "--quiet"]
    assert (
        main(["train", "--data", str(tmp_path / "wine.csv"), "--out", str(tmp_path), *flags]) == 0
    )
    command = load_checkpoint(tmp_path / "best.pt")
    read = pd.read_csv(tmp_path / "wine.csv")
    est = BNMLPClassifier(hidden=16, epochs=4, device="cpu", random_state=3)
    est.fit(read.drop(columns="target"), read["target"])
    ours = est.checkpoint_
    assert ours.preprocessing == command.preprocessing
    assert (ours.feature_names, ours.class_labels) == (command.feature_names, command.class_labels)
    assert ours.epoch == command.epoch
    for key, value in command.model_state.items():
        assert torch.equal(ours.model_state[key], value), key


def test_grid_search_over_hidden_and_lr_on_words_and_blanks() -> None:
    x, y = wine_words()
    grid = {"hidden": [(16,), (32, 32)], "lr": [1e-3, 1e-2]}
    search = GridSearchCV(BNMLPClassifier(epochs=8, device="cpu"), grid, cv=3)
    search.fit(x, y)
    assert len(search.cv_results_["params"]) == 4
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_params_["hidden"] in grid["hidden"] and search.best_score_ > 0.8
    assert search.best_estimator_.score(x, y) > 0.8


def test_pipeline_and_cross_val_score() -> None:
    x, y = load_diabetes(return_X_y=True)
    pipe = Pipeline([("scale", StandardScaler()), ("mlp", BNMLPRegressor(epochs=10, device="cpu"))])
    scores = cross_val_score(pipe, x, y, cv=3)
    assert scores.shape == (3,) and np.isfinite(scores).all() and scores.mean() > 0.2
    assert pipe.fit(x, y).predict(x[:5]).shape == (5,)


def test_pickled_predicts_the_same_and_seeds_repeat() -> None:
    x, y = wine_words()
    first = BNMLPClassifier(epochs=5, device="cpu", random_state=7).fit(x, y)
    again = BNMLPClassifier(epochs=5, device="cpu", random_state=7).fit(x, y)
    assert np.array_equal(first.predict_proba(x), again.predict_proba(x))
    restored = pickle.loads(pickle.dumps(first))
    assert np.array_equal(restored.predict_proba(x), first.predict_proba(x))
    other = BNMLPClassifier(epochs=5, device="cpu", random_state=8).fit(x, y)
    assert not np.array_equal(other.predict_proba(x), first.predict_proba(x))


def test_export_verifies_and_loads_back(tmp_path: Path) -> None:
    x, y = wine_words()
    clf = BNMLPClassifier(epochs=5, device="cpu").fit(x, y)
    result = clf.export(tmp_path / "wine.onnx", X=x.iloc[:40])
    assert result.report is not None and result.report.ok
    assert "validation rows: 40 given" in result.format()
    assert (tmp_path / "wine.report.json").is_file()
    model = bnmodel.load(tmp_path / "wine.onnx")
    frame = model.predict(x)
    assert list(frame.columns) == ["cultivar"]
    assert list(frame["cultivar"]) == list(clf.predict(x))
    probabilities = model.predict_proba(x)
    assert list(probabilities.columns) == ["p_class_0", "p_class_1", "p_class_2"]
    proba = probabilities.to_numpy()
    assert np.array_equal(proba, clf.predict_proba(x).astype(np.float32))
    clf.export(repository=tmp_path / "models", name="wine")
    served = bnmodel.load(tmp_path / "models" / "wine")
    assert np.array_equal(served.predict_proba(x).to_numpy(), proba)
    with pytest.raises(ValueError, match="say where to write"):
        clf.export()


def test_regressor_takes_several_targets_and_arrays() -> None:
    x, y = load_diabetes(return_X_y=True)
    two = np.stack([y, -y / 10], axis=1)
    reg = BNMLPRegressor(epochs=5, device="cpu").fit(x, two)
    assert reg.predict(x).shape == (len(x), 2) and reg.checkpoint_.feature_names[0] == "x0"
    assert reg.checkpoint_.target_name == "target_0,target_1"


def test_bad_prediction_input_names_the_column_and_row() -> None:
    x, y = wine_words()
    clf = BNMLPClassifier(epochs=2, device="cpu").fit(x, y)
    with pytest.raises(ValueError, match="feature names"):
        clf.predict(x.drop(columns="proline"))
    bad = x.copy()
    bad["ash"] = bad["ash"].astype(object)
    bad.loc[4, "ash"] = "lots"
    with pytest.raises(PredictError, match=r"column 'ash', row 5: 'lots' is not a number"):
        clf.predict(bad)
    with pytest.raises(ValueError, match="--hidden must be one or more sizes >= 1"):
        BNMLPClassifier(hidden=(0,)).fit(x, y)
    with pytest.raises(ValueError, match=r"hidden must be sizes such as \(64, 64\), got '64'"):
        BNMLPClassifier(hidden="64").fit(x, y)
