"""A raw table end to end: string columns, blank cells and string labels, trained with default
flags, exported, and predicted from the raw held-out CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from bnmodel.export.api import export_checkpoint

from bnmodel.cli import main
from bnmodel.predict import PredictError, load_model, predict_file
from bnmodel.train import TrainConfig, train

WINES = np.array(["barolo", "grignolino", "barbera"])


def raw_wine(seed: int = 0) -> pd.DataFrame:
    """sklearn's wine with two columns binned to words, ~10% blank cells, string labels."""
    from sklearn.datasets import load_wine

    bunch = load_wine(as_frame=True)
    frame = bunch.frame.drop(columns="target")
    rng = np.random.default_rng(seed)
    frame["alcohol"] = pd.cut(frame["alcohol"], 4, labels=["low", "mid", "high", "top"])
    frame["hue"] = pd.cut(frame["hue"], 3, labels=["pale", "medium", "deep"])
    frame = frame.astype({"alcohol": object, "hue": object})
    for column in ("magnesium", "proline", "color_intensity", "hue"):
        frame.loc[rng.random(len(frame)) < 0.1, column] = None
    frame["target"] = WINES[bunch.target]
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rawwine")
    frame = raw_wine()
    frame.iloc[:140].to_csv(root / "train.csv", index=False)
    frame.iloc[140:].to_csv(root / "heldout.csv", index=False)
    config = TrainConfig(data=str(root / "train.csv"), device="cpu", out_dir=root / "run")
    result = train(config, progress=False)
    exported = export_checkpoint(result.best_checkpoint, output=root / "wine.onnx")
    return {
        "root": root,
        "ckpt": result.best_checkpoint,
        "onnx": root / "wine.onnx",
        "heldout": root / "heldout.csv",
        "report": exported.report,
    }


def test_default_flags_train_export_and_predict_the_raw_heldout_csv(wine, tmp_path: Path):
    assert wine["report"].ok  # folded == unfolded == torch, blanks and unseen rows included
    assert "blanks and unseen" in {c.rows for c in wine["report"].comparisons}
    inputs = [i.name for i in onnx.load(wine["onnx"]).graph.input]
    assert inputs == ["features", "alcohol", "hue"]
    summary = predict_file(wine["onnx"], wine["heldout"], tmp_path / "out.csv")
    heldout = pd.read_csv(wine["heldout"])
    out = pd.read_csv(tmp_path / "out.csv")
    assert summary.rows == len(heldout) == 38
    assert (out["target"] == heldout["target"]).mean() >= 0.9
    # The same rows fed by hand: NaN for blanks, the text of each categorical column.
    session = ort.InferenceSession(str(wine["onnx"]), providers=["CPUExecutionProvider"])
    numeric = heldout.drop(columns=["alcohol", "hue", "target"]).to_numpy(np.float32)
    feed = {"features": numeric}
    for column in ("alcohol", "hue"):
        feed[column] = heldout[[column]].fillna("").to_numpy(dtype=object)
    expected = session.run(["probabilities"], feed)[0]
    np.testing.assert_allclose(out.iloc[:, 1:].to_numpy(), expected, atol=1e-6)


def test_checkpoint_parquet_and_extra_columns_give_the_same(wine, tmp_path: Path) -> None:
    heldout = pd.read_csv(wine["heldout"])
    predict_file(wine["onnx"], wine["heldout"], tmp_path / "a.csv")
    extra = heldout.assign(comment="ignored")[["comment", *reversed(heldout.columns)]]
    extra.to_parquet(tmp_path / "rows.parquet")
    predict_file(wine["ckpt"], tmp_path / "rows.parquet", tmp_path / "b.csv")
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    np.testing.assert_allclose(a.iloc[:, 1:], b.iloc[:, 1:], atol=1e-6)


def test_unseen_category_and_all_blank_row_predict(wine, tmp_path: Path) -> None:
    heldout = pd.read_csv(wine["heldout"]).iloc[:2].astype(object)
    heldout.loc[0, "alcohol"] = "never seen"
    heldout.loc[1, [c for c in heldout.columns if c != "target"]] = None
    heldout.to_csv(tmp_path / "odd.csv", index=False)
    predict_file(wine["onnx"], tmp_path / "odd.csv", tmp_path / "out.csv")
    out = pd.read_csv(tmp_path / "out.csv")
    probs = out.iloc[:, 1:].to_numpy()
    assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_bad_raw_input_is_named(wine, tmp_path: Path, capsys) -> None:
    heldout = pd.read_csv(wine["heldout"])
    heldout.drop(columns="hue").to_csv(tmp_path / "no_hue.csv", index=False)
    with pytest.raises(PredictError, match=r"no_hue.csv: column\(s\) \['hue'\] missing"):
        predict_file(wine["onnx"], tmp_path / "no_hue.csv", tmp_path / "o.csv")
    typo = heldout.astype({"ash": object})
    typo.loc[3, "ash"] = "two"
    typo.to_csv(tmp_path / "typo.csv", index=False)
    code = main(
        [
            "predict",
            str(wine["onnx"]),
            "--input",
            str(tmp_path / "typo.csv"),
            "--output",
            str(tmp_path / "o.csv"),
        ]
    )
    err = capsys.readouterr().err
    assert code != 0 and "column 'ash', row 4 (line 5): 'two' is not a number" in err
    assert "Traceback" not in err and not (tmp_path / "o.csv").exists()
    assert load_model(wine["onnx"]).categorical_columns == ["alcohol", "hue"]


def test_int8_of_a_raw_table_model(wine, tmp_path: Path) -> None:
    """Calibrated on the training rows (strings and blanks), checked on the validation rows."""
    result = export_checkpoint(wine["ckpt"], output=tmp_path / "int8.onnx", int8=True)
    assert result.int8.ok and result.int8.labeled
    predict_file(tmp_path / "int8.onnx", wine["heldout"], tmp_path / "out.csv")
    heldout = pd.read_csv(wine["heldout"])
    assert (pd.read_csv(tmp_path / "out.csv")["target"] == heldout["target"]).mean() >= 0.85


def test_raw_regressor_end_to_end(tmp_path: Path) -> None:
    """diabetes with 'sex' as words and blanks: target units out, folded == unfolded."""
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True, scaled=False).frame
    rng = np.random.default_rng(0)
    frame["sex"] = np.where(frame["sex"] == 1, "female", "male").astype(object)
    frame.loc[rng.random(len(frame)) < 0.1, "bmi"] = np.nan
    frame.loc[rng.random(len(frame)) < 0.05, "sex"] = None
    frame.iloc[:350].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[350:].to_csv(tmp_path / "heldout.csv", index=False)
    config = TrainConfig(
        data=str(tmp_path / "train.csv"), epochs=10, device="cpu", out_dir=tmp_path / "run"
    )
    result = train(config, progress=False)
    exported = export_checkpoint(result.best_checkpoint, output=tmp_path / "d.onnx")
    assert exported.report.ok and result.task == "regression"
    predict_file(tmp_path / "d.onnx", tmp_path / "heldout.csv", tmp_path / "out.csv")
    out = pd.read_csv(tmp_path / "out.csv")["target"].to_numpy()
    y = frame["target"].to_numpy()[350:]
    rmse = float(np.sqrt(np.mean((out - y) ** 2)))
    assert rmse < 0.8 * float(np.std(y))  # learned something, in target units


def test_local_model_predicts_a_dataframe_as_predict_writes_the_file(wine, tmp_path: Path):
    """The Python API's predictor: a DataFrame in, columns headed as `bnmodel predict` heads
    them out; a pyarrow Table gives the same."""
    import pyarrow as pa

    model = load_model(wine["onnx"])
    heldout = pd.read_csv(wine["heldout"])
    predict_file(model, wine["heldout"], tmp_path / "out.csv")
    written = pd.read_csv(tmp_path / "out.csv")
    labels = model.predict(heldout)
    assert list(labels.columns) == ["target"]
    assert labels["target"].tolist() == written["target"].tolist()
    probabilities = model.predict_proba(pa.Table.from_pandas(heldout))
    assert list(probabilities.columns) == list(written.columns[1:])
    np.testing.assert_allclose(probabilities.to_numpy(), written.iloc[:, 1:].to_numpy(), atol=1e-6)
    assert model.outputs(heldout).dtype == np.float32
