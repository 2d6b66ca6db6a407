"""The same DataFrame predicted by the estimator, by ``bnmodel.load`` of its ONNX export and by
a running ``bnmodel serve`` (gRPC and HTTP): identical outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_wine

import bnmodel
from bnmodel.launcher import spawn_server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A classifier fitted on wine with words and blanks, exported, and a server running it."""
    folder = tmp_path_factory.mktemp("remote")
    data = load_wine(as_frame=True)
    x = data.data.copy()
    x["colour"] = np.where(x["color_intensity"] > 5, "dark", "pale").astype(object)
    x.loc[::9, "colour"] = None
    x.loc[::7, "malic_acid"] = np.nan
    y = data.target.map(dict(enumerate(data.target_names))).rename("cultivar")
    clf = bnmodel.BNMLPClassifier(hidden=16, epochs=5, device="cpu").fit(x, y)
    clf.export(folder / "wine.onnx", repository=folder / "models", name="wine")
    args = ["--model-repository", str(folder / "models"), "--device", "cpu", "--workers", "1"]
    with spawn_server(args) as server:
        yield {"clf": clf, "x": x, "folder": folder, "server": server}


def _local(served: dict) -> tuple[pd.DataFrame, np.ndarray]:
    """What `bnmodel predict` writes for the rows (label, then p_LABEL columns), from the
    loaded ONNX export; and the estimator's probabilities, equal to it."""
    model = bnmodel.load(served["folder"] / "wine.onnx")
    x = served["x"]
    frame = pd.concat([model.predict(x), model.predict_proba(x)], axis=1)
    proba = served["clf"].predict_proba(x).astype(np.float32)
    assert np.array_equal(frame.iloc[:, 1:].to_numpy(), proba)  # estimator == its ONNX export
    return frame, proba


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_remote_predictor_gives_identical_outputs(served: dict, scheme: str) -> None:
    frame, _ = _local(served)
    server = served["server"]
    address = server.url if scheme == "grpc" else server.http_url.split("://", 1)[1]
    remote = bnmodel.load(f"{scheme}://{address}/wine")
    got = pd.concat([remote.predict(served["x"]), remote.predict_proba(served["x"])], axis=1)
    assert list(got.columns) == list(frame.columns)
    assert got.iloc[:, 0].tolist() == frame.iloc[:, 0].tolist()
    assert np.array_equal(got.iloc[:, 1:].to_numpy(np.float32), frame.iloc[:, 1:].to_numpy())


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_served_model_gives_identical_outputs_through_infer(
    served: dict, scheme: str, tmp_path: Path
) -> None:
    """The server's answer to the same rows (as bnmodel infer sends a CSV of them) equals the
    estimator's and the local ONNX model's, bit for bit."""
    from bnmodel.remote import predict_file

    frame, proba = _local(served)
    served["x"].to_csv(tmp_path / "rows.csv", index=False)
    server = served["server"]
    url = server.url if scheme == "grpc" else server.http_url
    predictions = predict_file(url, "wine", tmp_path / "rows.csv")
    assert np.array_equal(predictions.values, proba)
    assert list(predictions.classes) == frame["cultivar"].tolist()
    assert [predictions.label_column, *predictions.columns] == list(frame.columns)
