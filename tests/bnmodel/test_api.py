"""bnmodel.load: one call from a checkpoint, ONNX file, repository folder or URL to a predictor;
``import bnmodel`` stays light."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris

import bnmodel
from bnmodel.checkpoint import save_checkpoint
from bnmodel.predict import LocalModel, PredictError


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A fitted classifier, its checkpoint, ONNX file and repository model, and its rows."""
    folder = tmp_path_factory.mktemp("iris")
    data = load_iris(as_frame=True)
    x = data.data
    y = data.target.map(dict(enumerate(data.target_names))).rename("species")
    clf = bnmodel.BNMLPClassifier(hidden=16, epochs=5, device="cpu").fit(x, y)
    clf.export(folder / "iris.onnx", repository=folder / "models", name="iris")
    save_checkpoint(clf.checkpoint_, folder / "best.pt")
    x.assign(species=y).to_csv(folder / "iris.csv", index=False)
    return {"clf": clf, "x": x, "folder": folder}


def test_import_is_light_and_names_are_lazy() -> None:
    code = (
        "import sys, bnmodel; from bnmodel import load; "
        "assert callable(load) and 'BNMLPClassifier' in dir(bnmodel); "
        "import bnmodel.cli, bnmodel.errors, bnmodel.serve.cli; bnmodel.cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'pandas', 'sklearn', 'onnx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bnmodel.nope  # noqa: B018


@pytest.mark.parametrize("name", ["best.pt", "iris.onnx", "models/iris", "models/iris/1"])
def test_every_local_form_predicts_the_same(iris: dict, name: str) -> None:
    model = bnmodel.load(iris["folder"] / name)
    assert isinstance(model, LocalModel)
    labels, proba = model.predict(iris["x"]), model.predict_proba(iris["x"])
    expected = iris["clf"].predict_proba(iris["x"]).astype(np.float32)
    assert list(labels.columns) == ["species"]
    assert list(proba.columns) == ["p_setosa", "p_versicolor", "p_virginica"]
    assert np.allclose(proba.to_numpy(), expected, atol=1e-6)
    assert list(labels["species"]) == list(iris["clf"].predict(iris["x"]))
    assert list(labels.index) == list(proba.index) == list(iris["x"].index)


def test_inputs_in_every_form_agree(iris: dict) -> None:
    import pyarrow as pa

    model = bnmodel.load(iris["folder"] / "iris.onnx")
    x = iris["x"]
    reference = model.outputs(x)
    assert reference.dtype == np.float32 and reference.shape == (150, 3)
    assert np.array_equal(model.outputs(x.to_numpy()), reference)
    assert np.array_equal(model.outputs(pa.Table.from_pandas(x)), reference)
    assert np.array_equal(model.outputs(iris["folder"] / "iris.csv"), reference)
    proba = model.predict_proba(x)
    assert list(proba.columns) == ["p_setosa", "p_versicolor", "p_virginica"]
    with pytest.raises(PredictError, match=r"column\(s\) \['petal width \(cm\)'\] missing"):
        model.predict(x.drop(columns="petal width (cm)"))
    with pytest.raises(PredictError, match=r"array is \(150, 3\), the model needs \(N, 4\)"):
        model.predict(x.to_numpy()[:, :3])


def test_an_onnx_model_predicts_a_dataframe_without_torch(iris: dict) -> None:
    onnx_path = iris["folder"] / "iris.onnx"
    csv_path = iris["folder"] / "iris.csv"
    code = (
        "import sys; sys.modules['torch'] = None; import pandas as pd, bnmodel; "
        f"frame = bnmodel.load({str(onnx_path)!r}).predict(pd.read_csv({str(csv_path)!r})); "
        "print(len(frame), list(frame.columns)[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["150", "species"]


def test_urls_go_to_the_remote_predictor(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    remote = types.ModuleType("bnmodel.remote")
    remote.RemoteModel = lambda url, **options: calls.append((url, options)) or "remote"
    monkeypatch.setitem(sys.modules, "bnmodel.remote", remote)
    assert bnmodel.load("grpc://127.0.0.1:8001/iris", timeout=5.0) == "remote"
    assert bnmodel.load("HTTP://127.0.0.1:8000/iris") == "remote"
    assert calls == [
        ("grpc://127.0.0.1:8001/iris", {"timeout": 5.0}),
        ("HTTP://127.0.0.1:8000/iris", {}),
    ]


def test_a_bad_spec_is_named(tmp_path: Path) -> None:
    with pytest.raises(PredictError, match=f"model {tmp_path / 'absent.onnx'} does not exist"):
        bnmodel.load(tmp_path / "absent.onnx")
    with pytest.raises(TypeError, match="options .* are for URLs only"):
        bnmodel.load(tmp_path / "absent.onnx", timeout=1.0)
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "m.onnx")
    with pytest.raises(PredictError, match="is not a loadable ONNX model"):
        bnmodel.load(tmp_path / "m.onnx")
