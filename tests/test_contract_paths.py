"""One awkward CSV through every path: train-time reading, local predict, gRPC and HTTP infer.

The file holds padded text, every missing token, quoted delimiters, unicode, bool spellings, a
categorical column, numeric columns with blanks and a date column written every way ISO 8601
allows (and as epoch seconds). Every path must build the same model inputs
from it (the one reader, bnmodel/table.py) and get the same outputs under the same column
names (the one contract, bnmodel/contract.py), against a real `bnmodel serve` process.
"""

from __future__ import annotations

import csv
import datetime
from pathlib import Path

import numpy as np
import pytest
from bnmodel.export.api import export_checkpoint

from bnmodel import data, table
from bnmodel.encoding import Preprocessing
from bnmodel.launcher import spawn_server
from bnmodel.predict import load_model, predict_file
from bnmodel.remote import RemoteModel
from bnmodel.remote import predict_file as infer_file
from bnmodel.train import TrainConfig, train

COLORS = ["red", " red", "red ", "blue", "  blue ", "grün", "日本", "red, or so", "", "NA"]
FLAGS = ["True", "true", "TRUE", "False", " false", "FALSE", ""]
MISSING = sorted(table.MISSING_TOKENS)
# (cell, seconds since 1970 UTC): each ISO form, padded, zoned, fractional, and plain seconds.
_T = datetime.datetime(2024, 2, 29, 23, 59, 30, tzinfo=datetime.UTC).timestamp()
WHEN = [
    ("2024-02-29", _T - 86370),
    ("2024-02-29T23:59:30", _T),
    (" 2024-02-29 23:59:30.25 ", _T + 0.25),
    ("2024-03-01T01:59:30+02:00", _T),
    ("2024-02-29T23:59:30Z", _T),
    ("2024-02-29 18:29:30-0530", _T),
    (f"{_T:.0f}", _T),
    ("", float("nan")),
    ("NULL", float("nan")),
    ("1969-12-31 23:00", -3600.0),
]


def _awkward_rows(n: int, seed: int = 0) -> list[list[str]]:
    """(header, rows) with a learnable label: 'hi' when a + b > 0, padded as ' hi ' at times."""
    rng = np.random.default_rng(seed)
    rows = [["a", "color", "b", "flag", "when", "label"]]
    for i in range(n):
        a, b = rng.normal(size=2)
        cells = [f"{a:.4f}", COLORS[i % len(COLORS)], f" {b:.4f} ", FLAGS[i % len(FLAGS)]]
        cells.append(WHEN[i % len(WHEN)][0])
        if i % 7 == 3:  # every missing token, padded or not, in both numeric columns
            cells[0] = MISSING[i % len(MISSING)]
            cells[2] = f"  {MISSING[(i + 5) % len(MISSING)]} "
        label = "hi" if a + b > 0 else "lo"
        cells.append(f" {label}" if i % 5 == 0 else label)
        rows.append(cells)
    return rows


@pytest.fixture(scope="module")
def awkward(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("awkward")
    path = root / "rows.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(_awkward_rows(240))
    config = TrainConfig(
        data=str(path), target="label", device="cpu", out_dir=root / "run", epochs=3
    )
    result = train(config, progress=False)
    export_checkpoint(
        result.best_checkpoint, output=root / "awk.onnx", repository=root / "models", name="awk"
    )
    return {"csv": path, "onnx": root / "awk.onnx", "repo": root / "models", "root": root}


@pytest.fixture(scope="module")
def server(awkward):
    args = ["--model-repository", str(awkward["repo"]), "--device", "cpu", "--workers", "1"]
    with spawn_server(args) as process:
        yield process


def _local_inputs(model, path: Path) -> dict[str, np.ndarray]:
    chunks = list(
        table.iter_chunks(
            path,
            model.contract.feature_names,
            model.contract.categorical_columns,
            allow_missing=True,
            dates=model.contract.date_columns,
        )
    )
    feeds = [c.inputs(model.contract) for c in chunks]
    return {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}


def test_the_awkward_file_reads_as_the_cell_rules_say(awkward):
    ds = data.load_file(awkward["csv"], target="label")
    assert ds.categorical_names == ["color", "flag"] and ds.feature_names == ["a", "b"]
    assert ds.class_labels == ["hi", "lo"]  # " hi" is "hi"
    color = dict(zip(*np.unique(ds.categories[:, 0], return_counts=True), strict=True))
    assert color["red"] == 3 * color["blue"] / 2  # " red", "red " and "red"; blue twice
    assert {"grün", "日本", "red, or so", ""} <= set(color) and "NA" not in color
    assert set(ds.categories[:, 1]) == {"True", "False", ""}  # every bool spelling
    missing = np.isnan(ds.features).any(axis=1)
    assert missing.sum() == 240 // 7 + (240 % 7 > 3)  # each row that holds missing tokens
    assert ds.date_names == ["when"]
    expected = [WHEN[i % len(WHEN)][1] for i in range(240)]
    np.testing.assert_array_equal(ds.dates[:, 0], expected)  # NaN where missing


def test_train_time_reading_and_local_predict_build_the_same_inputs(awkward):
    model = load_model(awkward["onnx"])
    ds = data.load_file(awkward["csv"], target="label")
    inputs = _local_inputs(model, awkward["csv"])
    np.testing.assert_array_equal(inputs["features"], ds.features)  # NaN where NaN
    for i, column in enumerate(ds.categorical_names):
        assert inputs[column][:, 0].tolist() == ds.categories[:, i].tolist()
    assert inputs["when"].dtype == np.float64
    np.testing.assert_array_equal(inputs["when"], ds.dates)
    # The trained encoder sees the same slots: the model's input is identical.
    from bnmodel.checkpoint import load_checkpoint

    ckpt = load_checkpoint(awkward["root"] / "run" / "best.pt")
    prep = Preprocessing.from_dict(ckpt.preprocessing)
    categories = np.concatenate([inputs[c] for c in ds.categorical_names], axis=1)
    np.testing.assert_array_equal(prep.codes(categories), prep.codes(ds.categories))


@pytest.mark.parametrize("http", [False, True], ids=["grpc", "http"])
def test_infer_sends_what_local_predict_feeds_and_gets_its_answers(awkward, server, http, tmp_path):
    local = load_model(awkward["onnx"])
    url = f"{server.http_url}/awk" if http else f"grpc://{server.url}/awk"
    with RemoteModel(url) as remote:
        assert remote.contract == local.contract  # from config.pbtxt == from ONNX metadata
        sent = list(remote.request_inputs(awkward["csv"]))
        served = remote.outputs(awkward["csv"])
        frame = remote.predict_proba(awkward["csv"])
    expected = _local_inputs(local, awkward["csv"])
    for name, values in expected.items():
        got = np.concatenate([request[name] for request in sent])
        if values.dtype == object:
            assert got[:, 0].tolist() == values[:, 0].tolist(), name
        else:
            np.testing.assert_array_equal(got, values)
    np.testing.assert_allclose(served, local.outputs(awkward["csv"]), rtol=1e-6, atol=1e-7)
    assert list(frame.columns) == ["p_hi", "p_lo"]
    # The CLIs' files: the same header, the same classes.
    summary = predict_file(local, awkward["csv"], tmp_path / "local.csv")
    remote_url = server.http_url if http else server.url
    answers = infer_file(remote_url, "awk", awkward["csv"])
    assert summary.columns == ["label", "p_hi", "p_lo"]
    assert (answers.label_column, *answers.columns) == tuple(summary.columns)
    with (tmp_path / "local.csv").open() as f:
        local_classes = [row[0] for row in csv.reader(f)][1:]
    assert list(answers.classes) == [c.strip('"') for c in local_classes]


def test_unseen_text_is_reported_alike_by_predict_evaluate_and_infer(awkward, server, tmp_path):
    """Upper-case colours: text training never saw, so the "other" slot; every path says so."""
    rows = _awkward_rows(60, seed=1)
    for cells in rows[1:]:
        cells[1] = cells[1].upper()  # "RED", "GRÜN": not the text training saw
    path = tmp_path / "shouted.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    local = predict_file(awkward["onnx"], path, tmp_path / "out.csv").warnings
    (line,) = local
    assert line.startswith("column 'color': ") and 'fall into the "other" slot' in line
    assert "'RED' (" in line and "'GRÜN' (" in line
    from bnmodel.evaluate import evaluate_file

    assert evaluate_file(awkward["onnx"], path, plot=None).warnings == [line]
    for url in (server.url, server.http_url):
        assert infer_file(url, "awk", path).warnings == (line,)
    assert predict_file(awkward["onnx"], awkward["csv"], tmp_path / "out.csv").warnings == ()
