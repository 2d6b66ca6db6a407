"""INT8 export: a quantized graph of the folded model, checked on validation rows, served as is."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from bnmodel.export.api import export_checkpoint
from bnmodel.export.int8 import Int8AccuracyError, Int8Error
from bnmodel.serve.client import InferenceClient
from export_testlib import make_checkpoint

from bnmodel.checkpoint import load_checkpoint, save_checkpoint
from bnmodel.cli import main
from bnmodel.data import validation_split
from bnmodel.launcher import spawn_server


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small digits classifier, trained through the CLI (a few seconds)."""
    out = tmp_path_factory.mktemp("trained")
    args = ["train", "--hidden", "32", "32", "--epochs", "3", "--seed", "0", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    return out / "best.pt"


def _validation(checkpoint: Path) -> tuple[np.ndarray, np.ndarray]:
    _, val = validation_split(load_checkpoint(checkpoint).data_spec)
    return val.features, val.targets


def _session(path: Path, optimized: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.slow  # the trained fixture: a few seconds once
def test_int8_graph_is_per_channel_qdq_and_keeps_accuracy(trained: Path, tmp_path: Path) -> None:
    result = export_checkpoint(trained, output=tmp_path / "int8.onnx", int8=True)
    report = result.int8
    assert report.ok and report.labeled and report.rows == 359
    assert report.drop <= 0.5 and report.argmax_agreement >= 98.0

    # The written file, measured here rather than through the report.
    x, y = _validation(trained)
    logits, probabilities = _session(result.onnx_path).run(None, {"features": x})
    assert 100 * (logits.argmax(1) == y).mean() == pytest.approx(report.int8_metric)
    assert logits.dtype == probabilities.dtype == np.float32

    model = onnx.load(result.onnx_path)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["bnmodel.precision"] == "int8" and meta["bnmodel.task"] == "classification"
    inits = {t.name: t for t in model.graph.initializer}
    weight_scales = [
        inits[n.input[1]]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0].endswith("weight_quantized")
    ]
    # This small model loses 0.84 points with every Linear in int8: Linear 1 stays float.
    assert "int8 variant: Linear 1 kept in float" in report.notes
    assert [list(s.dims) for s in weight_scales] == [[32], [10]]  # one scale per out channel
    producer = next(n for n in model.graph.node if "logits" in n.output)
    assert producer.op_type == "Gemm"  # logits straight from the last Gemm, not 256 levels
    _session(result.onnx_path, tmp_path / "optimized.onnx")
    optimized = [n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node]
    assert optimized.count("QGemm") == 2 and optimized.count("Gemm") == 1


@pytest.mark.slow  # the trained fixture: a few seconds once
def test_every_linear_is_int8_when_that_keeps_accuracy(trained: Path, tmp_path: Path) -> None:
    result = export_checkpoint(
        trained, output=tmp_path / "m.onnx", int8=True, max_accuracy_drop=5.0, verify=False
    )
    assert "int8 variant: every Linear in int8" in result.int8.notes
    _session(result.onnx_path, tmp_path / "optimized.onnx")
    optimized = [n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node]
    assert optimized.count("QGemm") == 3 and "Gemm" not in optimized


@pytest.mark.slow  # the trained fixture: a few seconds once
def test_int8_repository_is_served_unchanged(trained: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    export_checkpoint(trained, repository=repo, name="digits", int8=True, verify=False)
    x, _ = _validation(trained)
    expected = _session(repo / "digits" / "1" / "model.onnx").run(None, {"features": x[:64]})
    with (
        spawn_server(["--model-repository", str(repo), "--workers", "1"]) as server,
        InferenceClient(server.url) as client,
    ):
        got = client.infer("digits", x[:64])
    np.testing.assert_allclose(got["logits"], expected[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["probabilities"], expected[1], rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # the trained fixture: a few seconds once
def test_accuracy_drop_beyond_the_limit_fails_and_writes_nothing(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Calibration rows far outside the data (digits pixels are 0..16): every activation range
    # is set by values the model never sees, so the real rows quantize to a few levels.
    far = tmp_path / "far.npz"
    np.savez(far, X=np.full((8, 64), -1000.0, np.float32))
    out = tmp_path / "out"
    args = ["export", str(trained), "-o", str(out / "m.onnx"), "--int8"]
    assert main([*args, "--calibration-data", str(far)]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out
    (line,) = captured.err.strip().splitlines()
    assert "exceeds --max-accuracy-drop 0.5" in line and "nothing written" in line
    assert not out.exists()


@pytest.mark.slow  # the trained fixture: a few seconds once
def test_calibration_csv_is_read_by_feature_name(trained: Path, tmp_path: Path) -> None:
    ckpt = load_checkpoint(trained)
    train, _ = validation_split(ckpt.data_spec)
    frame = pd.DataFrame(train.features, columns=ckpt.feature_names)
    frame.insert(0, "row_id", np.arange(len(frame)))  # extra columns are ignored
    frame.iloc[:, ::-1].to_csv(tmp_path / "calib.csv", index=False)  # any column order
    result = export_checkpoint(
        trained, int8=True, calibration_data=tmp_path / "calib.csv", verify=False
    )
    assert result.int8.ok and "1438 rows of" in result.int8.notes[0]
    frame.drop(columns=[ckpt.feature_names[5]]).to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(
        Int8Error, match=rf"missing feature column\(s\) \['{ckpt.feature_names[5]}'"
    ):
        export_checkpoint(trained, int8=True, calibration_data=tmp_path / "short.csv")


def test_int8_regressor_is_judged_on_rmse(tmp_path: Path) -> None:
    ckpt_path = make_checkpoint(tmp_path / "reg.pt", task="regression", out_features=1)
    ckpt = load_checkpoint(ckpt_path)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.standard_normal((300, 6)) * 3, columns=ckpt.feature_names)
    frame["y"] = frame.sum(axis=1) + rng.standard_normal(300)
    frame.to_csv(tmp_path / "rows.csv", index=False)
    spec = {"source": str(tmp_path / "rows.csv"), "target": "y", "task": "regression"}
    ckpt.data_spec = {**spec, "seed": 0, "val_fraction": 0.2}
    save_checkpoint(ckpt, ckpt_path)
    result = export_checkpoint(ckpt_path, output=tmp_path / "reg.onnx", int8=True, verify=False)
    report = result.int8
    assert report.task == "regression" and report.rows == 60 and report.ok
    assert "RMSE" in report.format() and report.max_prediction_difference > 0
    with pytest.raises(Int8AccuracyError, match="exceeds --max-rmse-increase -1"):
        export_checkpoint(ckpt_path, int8=True, max_rmse_increase=-1.0, verify=False)


def test_int8_without_training_data_asks_for_calibration_rows(checkpoint_path: Path) -> None:
    with pytest.raises(Int8Error, match="pass --calibration-data FILE"):
        export_checkpoint(checkpoint_path, int8=True)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--calibration-data", "c.csv"], "--calibration-data needs --int8"),
        (["--max-accuracy-drop", "1"], "--max-accuracy-drop needs --int8"),
        (["--int8", "--fp16"], "drop --fp16 and --no-fold"),
        (["--int8", "--max-accuracy-drop", "-1"], "--max-accuracy-drop must be >= 0, got -1"),
    ],
)
def test_int8_flag_misuse_is_a_usage_error(
    checkpoint_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["export", str(checkpoint_path), "--verify-only", *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # trains through the CLI: a few seconds
def test_int8_of_a_trained_regressor_keeps_target_units(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A regressor trained on a target in the hundreds: the de-standardization folded into the
    last Linear survives quantization (int8 RMSE in target units); the CLI passes the RMSE bar."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.standard_normal((400, 5)), columns=[f"f{i}" for i in range(5)])
    frame["price"] = 300 + 80 * frame.f0 - 40 * frame.f1 + 5 * rng.standard_normal(400)
    frame.to_csv(tmp_path / "rows.csv", index=False)
    out = tmp_path / "run"
    args = ["--data", str(tmp_path / "rows.csv"), "--target", "price", "--hidden", "32"]
    assert (
        main(["train", *args, "--epochs", "15", "--seed", "0", "--quiet", "--out", str(out)]) == 0
    )
    result = export_checkpoint(out / "best.pt", output=tmp_path / "reg.onnx", int8=True)
    assert [s.kind for s in result.fold_report.steps][-1] == "linear<-target_scale"
    assert any("target units" in note for note in result.report.notes)
    report = result.int8
    assert report.task == "regression" and report.ok
    assert report.fp32_metric < 30 and report.int8_metric < 30  # target std ~ 90
    features, targets = _validation(out / "best.pt")
    got = _session(tmp_path / "reg.onnx").run(None, {"features": features})[0][:, 0]
    assert np.sqrt(np.mean((got - targets.reshape(-1)) ** 2)) == pytest.approx(
        report.int8_metric, rel=1e-4
    )
    capsys.readouterr()
    flags = ["--int8", "--max-rmse-increase", "5", "-o", str(tmp_path / "cli.onnx")]
    assert main(["export", str(out / "best.pt"), *flags]) == 0
    assert re.search(r"RMSE [\d.]+ -> [\d.]+ \([+-][\d.]+%, allowed 5%\)", capsys.readouterr().out)
