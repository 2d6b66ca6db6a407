"""bnmodel predict: a trained model on a file of raw rows, on ONNX Runtime, without a server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from bnmodel.export.api import export_checkpoint

from bnmodel.cli import main
from bnmodel.config import ModelConfig
from bnmodel.predict import PredictError, load_model, predict_file
from bnmodel.train import TrainConfig, train

SPECIES = np.array(["setosa", "versicolor", "virginica"])


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A classifier trained on iris with string labels, exported as ONNX and to a repository."""
    from sklearn.datasets import load_iris

    root = tmp_path_factory.mktemp("iris")
    frame = load_iris(as_frame=True).frame
    frame["target"] = SPECIES[frame["target"]]
    frame.to_csv(root / "iris.csv", index=False)
    config = TrainConfig(
        data=str(root / "iris.csv"),
        model=ModelConfig(hidden_sizes=(16,)),
        epochs=20,
        batch_size=16,
        device="cpu",
        out_dir=root / "run",
    )
    result = train(config, progress=False)
    export_checkpoint(
        result.best_checkpoint, output=root / "iris.onnx", repository=root / "models", name="iris"
    )
    return {"csv": root / "iris.csv", "ckpt": result.best_checkpoint, "onnx": root / "iris.onnx"}


def _reference(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {session.get_inputs()[0].name: x})[0]


def test_csv_in_csv_out_with_user_labels(iris: dict[str, Path], tmp_path: Path) -> None:
    frame = pd.read_csv(iris["csv"])
    # Columns in another order: features are picked by name, the target is ignored.
    shuffled = frame[["target", *reversed(frame.columns[:-1])]]
    shuffled.to_csv(tmp_path / "rows.csv", index=False)
    summary = predict_file(iris["onnx"], tmp_path / "rows.csv", tmp_path / "out.csv", chunk_rows=7)
    out = pd.read_csv(tmp_path / "out.csv")
    assert summary.rows == len(frame) == len(out)
    assert list(out.columns) == ["target", "p_setosa", "p_versicolor", "p_virginica"]
    x = frame.drop(columns="target").to_numpy(np.float32)
    expected = _reference(iris["onnx"], x)
    assert np.allclose(out.iloc[:, 1:].to_numpy(), expected, atol=1e-6)
    assert (out["target"].to_numpy() == SPECIES[expected.argmax(axis=1)]).all()
    assert (out["target"] == frame["target"]).mean() > 0.8


@pytest.mark.parametrize("suffix", [".parquet", ".npy", ".npz"])
def test_other_inputs_and_parquet_output(iris: dict[str, Path], tmp_path: Path, suffix: str):
    frame = pd.read_csv(iris["csv"])
    x = frame.drop(columns="target").to_numpy(np.float32)
    path = tmp_path / f"rows{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path)
    elif suffix == ".npy":
        np.save(path, x)
    else:
        np.savez(path, X=x)
    predict_file(iris["onnx"], path, tmp_path / "out.parquet", chunk_rows=64)
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert np.allclose(out.iloc[:, 1:].to_numpy(), _reference(iris["onnx"], x), atol=1e-6)


def test_checkpoint_and_repository_folder_give_the_same(iris: dict[str, Path], tmp_path: Path):
    answers = []
    for model in (iris["onnx"], iris["ckpt"], iris["onnx"].parent / "models" / "iris"):
        predict_file(model, iris["csv"], tmp_path / "out.csv")
        answers.append(pd.read_csv(tmp_path / "out.csv").iloc[:, 1:].to_numpy())
    assert np.allclose(answers[0], answers[1], atol=1e-5) and np.array_equal(*answers[::2])


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (
            {"sepal width (cm)": (4, "oops")},
            r"column 'sepal width \(cm\)', row 5 \(line 6\): 'oops'",
        ),
        (
            {"petal length (cm)": (2, "")},
            r"column 'petal length \(cm\)', row 3 \(line 4\): value is",
        ),
    ],
)
def test_bad_cell_is_named_by_column_and_row(
    iris: dict[str, Path], tmp_path: Path, edit: dict, pattern: str
) -> None:
    frame = pd.read_csv(iris["csv"]).astype(object)
    for column, (row, value) in edit.items():
        frame.loc[row, column] = value
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(PredictError, match=pattern):
        predict_file(iris["onnx"], tmp_path / "bad.csv", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_missing_column_and_bad_model_are_one_line_errors(
    iris: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pd.read_csv(iris["csv"]).drop(columns="petal width (cm)").to_csv(tmp_path / "x.csv")
    argv = ["predict", str(iris["onnx"]), "--input", str(tmp_path / "x.csv"), "--output"]
    assert main([*argv, str(tmp_path / "out.csv")]) == 1  # the data: exit 1
    err = capsys.readouterr().err
    assert "['petal width (cm)'] missing" in err and err.count("\n") == 1
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(PredictError, match="junk.onnx is not a loadable ONNX model"):
        load_model(tmp_path / "junk.onnx")


def test_onnx_model_predicts_without_torch(iris: dict[str, Path], tmp_path: Path) -> None:
    # The base install has no torch: block it and predict through the CLI entry point.
    code = (
        "import sys; sys.modules['torch'] = None; from bnmodel.cli import main; "
        f"sys.exit(main(['predict', {str(iris['onnx'])!r}, '--input', {str(iris['csv'])!r}, "
        f"'--output', {str(tmp_path / 'out.csv')!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(tmp_path / "out.csv")) == 150


def test_evaluate_classifier(iris: dict[str, Path], tmp_path: Path, capsys) -> None:
    from sklearn import metrics

    plot = tmp_path / "cm.png"
    argv = ["evaluate", str(iris["onnx"]), "--data", str(iris["csv"]), "--plot", str(plot)]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    frame = pd.read_csv(iris["csv"])
    probs = _reference(iris["onnx"], frame.drop(columns="target").to_numpy(np.float32))
    truth = np.searchsorted(SPECIES, frame["target"])
    assert report["metrics"]["accuracy"] == pytest.approx(
        metrics.accuracy_score(truth, probs.argmax(1))
    )
    assert report["metrics"]["log_loss"] == pytest.approx(metrics.log_loss(truth, probs), 1e-4)
    assert np.array(report["confusion_matrix"]).sum() == 150
    assert report["class_labels"] == list(SPECIES) and plot.read_bytes()[:4] == b"\x89PNG"


def test_evaluate_names_an_unseen_label(iris: dict[str, Path], tmp_path: Path, capsys) -> None:
    frame = pd.read_csv(iris["csv"])
    frame.loc[:2, "target"] = "daisy"
    frame.to_csv(tmp_path / "new.csv", index=False)
    argv = ["evaluate", str(iris["onnx"]), "--data", str(tmp_path / "new.csv")]
    assert main([*argv, "--plot", str(tmp_path / "p.png")]) == 1
    assert "never saw in training: 'daisy' (3 rows)" in capsys.readouterr().err


def test_evaluate_drops_and_counts_blank_targets(iris: dict[str, Path], tmp_path: Path, capsys):
    """Rows whose label is blank are not scored (training drops them too) and are counted."""
    frame = pd.read_csv(iris["csv"])
    frame["target"] = frame["target"].astype(object)
    frame.loc[[0, 50, 100], "target"] = None
    frame.to_csv(tmp_path / "blanks.csv", index=False)
    assert (
        main(
            [
                "evaluate",
                str(iris["onnx"]),
                "--data",
                str(tmp_path / "blanks.csv"),
                "--json",
                "--plot",
                str(tmp_path / "b.png"),
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["blank_target_rows"] == 3 and report["rows"] == 147
    assert np.array(report["confusion_matrix"]).sum() == 147
    kept = frame.dropna(subset=["target"])
    probs = _reference(iris["onnx"], kept.drop(columns="target").to_numpy(np.float32))
    truth = np.searchsorted(SPECIES, kept["target"])
    assert report["metrics"]["accuracy"] == pytest.approx(float((probs.argmax(1) == truth).mean()))
    frame["target"] = None
    frame.to_csv(tmp_path / "none.csv", index=False)
    assert (
        main(
            [
                "evaluate",
                str(iris["onnx"]),
                "--data",
                str(tmp_path / "none.csv"),
                "--plot",
                str(tmp_path / "n.png"),
            ]
        )
        == 1
    )
    assert "target column 'target' is blank in every row" in capsys.readouterr().err


def test_evaluate_regressor(tmp_path: Path) -> None:
    from bnmodel.evaluate import evaluate_file

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    frame["y"] = 100 + 30 * (x @ [1.0, -2.0, 0.5]) + rng.normal(size=300)
    frame.to_csv(tmp_path / "reg.csv", index=False)
    config = TrainConfig(
        data=str(tmp_path / "reg.csv"),
        target="y",
        model=ModelConfig(hidden_sizes=(32,)),
        epochs=30,
        device="cpu",
        out_dir=tmp_path / "run",
    )
    result = train(config, progress=False)
    evaluation = evaluate_file(
        result.best_checkpoint, tmp_path / "reg.csv", plot=tmp_path / "p.png"
    )
    assert set(evaluation.metrics) == {"rmse", "mae", "r2"}
    assert evaluation.metrics["r2"] > 0.9 and evaluation.metrics["rmse"] < 0.3 * frame["y"].std()
    assert (tmp_path / "p.png").is_file()


def test_several_regression_targets(tmp_path: Path) -> None:
    from bnmodel.evaluate import evaluate_file

    rng = np.random.default_rng(1)
    x = rng.normal(size=(240, 3))
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    frame["up"] = 50 + 10 * x[:, 0] + rng.normal(size=240)
    frame["down"] = -3 * x[:, 1] + 0.1 * rng.normal(size=240)
    frame.to_csv(tmp_path / "two.csv", index=False)
    config = TrainConfig(
        data=str(tmp_path / "two.csv"),
        target="up,down",
        model=ModelConfig(hidden_sizes=(32,)),
        epochs=25,
        device="cpu",
        out_dir=tmp_path / "run",
    )
    result = train(config, progress=False)
    assert result.task == "regression" and result.best_metrics["val_r2"] > 0.8
    predict_file(result.best_checkpoint, tmp_path / "two.csv", tmp_path / "out.csv")
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["up", "down"]
    evaluation = evaluate_file(result.best_checkpoint, tmp_path / "two.csv")
    assert evaluation.metrics["r2"] > 0.8


def test_bad_output_is_named(iris: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(PredictError, match=r"output .*out.txt: unknown format '.txt'"):
        predict_file(iris["onnx"], iris["csv"], tmp_path / "out.txt")
    with pytest.raises(PredictError, match=r"folder .*nowhere does not exist"):
        predict_file(iris["onnx"], iris["csv"], tmp_path / "nowhere" / "out.csv")


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "--chunk-rows" in out and "(default: 65536)" in out
    if command == "predict":  # required flags show no "(default: None)"
        assert "(default: None)" not in out.split("options:")[1]
