"""Raw-row models: encoders folded into the first layer, string inputs, metadata and config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from bnmodel.export.api import export_checkpoint
from bnmodel.export.encoders import split_first_layer
from bnmodel.export.fold import fold_model
from bnmodel.export.int8 import Int8Error
from bnmodel.export.verify import UNSEEN
from export_testlib import make_model

from bnmodel.checkpoint import Checkpoint, save_checkpoint
from bnmodel.encoding import fit_preprocessing

# Two small vocabularies (one-hot into the first Gemm) and one of 40 (a Gather of its table).
VOCABS = (("red", "green", "blue"), ("s", "m"), tuple(f"city{i}" for i in range(40)))
COLUMNS = ["color", "size", "city"]


def _prep(num_numeric: int = 3):
    """Preprocessing with the test vocabularies: numerics x0.. (x1 had blanks), colors, sizes."""
    rng = np.random.default_rng(0)
    numeric = rng.normal(size=(400, num_numeric)) * 5 + 2
    if num_numeric > 1:
        numeric[::7, 1] = np.nan
    cats = np.stack(
        [np.asarray(v, dtype=object)[rng.integers(0, len(v), 400)] for v in VOCABS], axis=1
    )
    return fit_preprocessing(numeric, [f"x{i}" for i in range(num_numeric)], cats, COLUMNS)


def _checkpoint(tmp_path: Path, embedding_dim: int = 0, num_numeric: int = 3, seed: int = 0):
    prep = _prep(num_numeric)
    model = make_model(
        seed,
        in_features=num_numeric,
        impute_missing=True,
        indicator_columns=prep.indicator_index,
        category_sizes=prep.category_sizes,
        embedding_dim=embedding_dim,
    )
    with torch.no_grad():
        model.encode.impute.copy_(torch.tensor(prep.impute_values))
    ckpt = Checkpoint(
        model_config=model.config,
        model_state=model.state_dict(),
        task="classification",
        feature_names=list(prep.numeric),
        target_name="y",
        class_labels=["a", "b", "c"],
        preprocessing=prep.to_dict(),
    )
    return save_checkpoint(ckpt, tmp_path / "raw.pt"), model, prep


@pytest.mark.parametrize("embedding_dim", [0, 4])
def test_split_tables_equal_one_hot_or_embedding_times_w(embedding_dim: int) -> None:
    gen = torch.Generator().manual_seed(0)
    sizes, dense, h = (3, 2), 4, 5
    widths = [embedding_dim or s for s in sizes]
    weight = torch.randn(h, dense + sum(widths), generator=gen, dtype=torch.float64)
    bias = torch.randn(h, generator=gen, dtype=torch.float64)
    center = torch.randn(weight.shape[1], generator=gen, dtype=torch.float64)
    embeddings = None
    if embedding_dim:
        embeddings = [
            torch.randn(s, embedding_dim, generator=gen, dtype=torch.float64) for s in sizes
        ]
    split = split_first_layer(weight, bias, dense, sizes, embeddings, center, num_numeric=3)
    x = torch.randn(dense, dtype=torch.float64)
    slots = (2, 1)
    blocks = [
        (torch.eye(s, dtype=torch.float64)[v] if embeddings is None else embeddings[i][v])
        for i, (s, v) in enumerate(zip(sizes, slots, strict=True))
    ]
    full = torch.cat([x, *blocks])
    expected = weight @ (full - center) + bias
    dense_in = torch.cat([x[:3] - split.center, x[3:]])
    got = (
        split.dense @ dense_in
        + split.bias
        + sum(t[v] for t, v in zip(split.tables, slots, strict=True))
    )
    assert torch.allclose(got, expected, atol=1e-12)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("embedding_dim", [0, 3])
def test_folded_graph_takes_raw_columns(tmp_path: Path, embedding_dim: int) -> None:
    path, model, prep = _checkpoint(tmp_path, embedding_dim)
    result = export_checkpoint(path, output=tmp_path / "m.onnx", repository=tmp_path / "repo")
    assert result.report.ok
    assert {c.rows for c in result.report.comparisons} == {"random", "blanks and unseen"}
    proto = onnx.load(tmp_path / "m.onnx")
    ops = [n.op_type for n in proto.graph.node]
    assert "BatchNormalization" not in ops
    assert {"IsNaN", "Where", "LabelEncoder", "Cast"} <= set(ops)
    assert ops.count("OneHot") == 2  # color and size into the first Gemm
    gathers = [n for n in proto.graph.node if n.op_type == "Gather" and "city" in n.name]
    assert len(gathers) == 1  # city: 41 slots, a lookup of its folded table
    assert [i.name for i in proto.graph.input] == ["features", *COLUMNS]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["bnmodel.categorical_columns"]) == COLUMNS
    assert json.loads(meta["bnmodel.preprocessing"])["vocabularies"]["color"] == list(
        prep.vocabularies[0]
    )
    # By hand: blanks, an unseen value and a blank categorical against torch on the codes.
    x = np.array([[1.0, np.nan, 3.0], [np.nan, 2.0, np.nan]], np.float32)
    cats = np.array([["blue", "m", "city7"], [UNSEEN, "", "city99"]], dtype=object)
    feed = {"features": x, **{c: cats[:, i : i + 1] for i, c in enumerate(COLUMNS)}}
    out = _session(tmp_path / "m.onnx").run(["logits"], feed)[0]
    codes = prep.model_input(x, cats)
    assert codes[1, 3:].tolist() == [3.0, 2.0, 40.0]  # all three "other" slots
    with torch.no_grad():
        expected = model(torch.from_numpy(codes)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    config = (tmp_path / "repo" / "raw" / "config.pbtxt").read_text()
    assert config.count("TYPE_STRING") == 3 and '"[\\"color\\", \\"size\\", \\"city\\"]"' in config


def test_only_categorical_columns_no_features_input(tmp_path: Path) -> None:
    path, _, _ = _checkpoint(tmp_path, num_numeric=0)
    result = export_checkpoint(path, output=tmp_path / "m.onnx", repository=tmp_path / "repo")
    assert result.report.ok
    session = _session(tmp_path / "m.onnx")
    assert [i.name for i in session.get_inputs()] == COLUMNS
    assert 'name: "features"' not in (tmp_path / "repo" / "raw" / "config.pbtxt").read_text()


def test_fp16_unfolded_and_int8(tmp_path: Path) -> None:
    path, _, _ = _checkpoint(tmp_path)
    fp16 = export_checkpoint(path, output=tmp_path / "h.onnx", fp16=True)
    assert (
        fp16.report.ok and _session(tmp_path / "h.onnx").get_inputs()[0].type == "tensor(float16)"
    )
    unfolded = export_checkpoint(path, output=tmp_path / "u.onnx", fold=False)
    ops = [n.op_type for n in onnx.load(tmp_path / "u.onnx").graph.node]
    assert "BatchNormalization" in ops and "LabelEncoder" in ops and unfolded.report.ok
    with pytest.raises(Int8Error, match="--int8 needs calibration rows"):
        export_checkpoint(path, output=tmp_path / "q.onnx", int8=True)
    # Calibration rows as raw columns: blanks and text, read as predict reads them.
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(300, 3)) * 5 + 2, columns=["x0", "x1", "x2"])
    frame.loc[::5, "x1"] = np.nan
    for column, vocab in zip(COLUMNS, VOCABS, strict=True):
        frame[column] = np.asarray(vocab, dtype=object)[rng.integers(0, len(vocab), 300)]
    frame.to_csv(tmp_path / "calibration.csv", index=False)
    int8 = export_checkpoint(
        path,
        output=tmp_path / "q.onnx",
        int8=True,
        calibration_data=tmp_path / "calibration.csv",
        max_accuracy_drop=100.0,  # random weights: the check runs, its bound is not the point
    )
    ops = {n.op_type for n in onnx.load(tmp_path / "q.onnx").graph.node}
    assert {"QuantizeLinear", "LabelEncoder", "IsNaN"} <= ops and int8.int8.rows == 300
    assert any("categorical lookups stay in float" in n for n in int8.int8.notes)


def test_fold_keeps_the_encoder_first(tmp_path: Path) -> None:
    _, model, _ = _checkpoint(tmp_path)
    folded, report = fold_model(model)
    assert type(folded.net[0]).__name__ == "Encode"
    assert any(step.kind.startswith("standardize") for step in report.steps)
