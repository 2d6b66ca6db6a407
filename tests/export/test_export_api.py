"""export_checkpoint end to end on checkpoint files: outputs, metadata, failures write nothing."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from bnmodel.export import api
from bnmodel.export.api import export_checkpoint
from bnmodel.export.fp16 import Fp16RangeError
from bnmodel.export.verify import ExportMismatchError
from export_testlib import make_checkpoint

from bnmodel.checkpoint import CheckpointError, file_sha256, load_checkpoint, save_checkpoint


def _ops(path: Path) -> list[str]:
    return [node.op_type for node in onnx.load(path).graph.node]


def test_export_writes_a_folded_graph_with_metadata(checkpoint_path: Path, tmp_path: Path) -> None:
    result = export_checkpoint(checkpoint_path, output=tmp_path / "out" / "model.onnx")
    assert result.report is not None and result.report.ok
    assert result.paths == [tmp_path / "out" / "model.onnx", tmp_path / "out" / "model.report.json"]
    assert "BatchNormalization" not in _ops(result.onnx_path)
    meta = {p.key: p.value for p in onnx.load(result.onnx_path).metadata_props}
    assert meta["bnmodel.task"] == "classification"
    assert meta["bnmodel.checkpoint_sha256"] == file_sha256(checkpoint_path)
    assert json.loads(meta["bnmodel.feature_names"]) == [f"x{i}" for i in range(6)]
    assert json.loads(meta["bnmodel.class_labels"]) == ["class0", "class1", "class2"]
    assert len(json.loads(meta["bnmodel.folded"])["folded"]) == len(result.fold_report.steps) > 0
    assert json.loads(meta["bnmodel.versions"])["torch"] == torch.__version__


def test_no_fold_writes_the_reference_graph_with_batchnorm(
    checkpoint_path: Path, tmp_path: Path
) -> None:
    result = export_checkpoint(checkpoint_path, output=tmp_path / "ref.onnx", fold=False)
    assert _ops(result.onnx_path).count("BatchNormalization") == 2


def test_verify_only_writes_nothing(checkpoint_path: Path, tmp_path: Path) -> None:
    result = export_checkpoint(checkpoint_path)
    assert result.report.ok and result.paths == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_missing_and_corrupt_checkpoints_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        export_checkpoint(tmp_path / "absent.pt", output=tmp_path / "m.onnx")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="cannot be read"):
        export_checkpoint(corrupt, output=tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_checkpoint_without_running_statistics_is_refused(
    checkpoint_path: Path, tmp_path: Path
) -> None:
    ckpt = load_checkpoint(checkpoint_path)
    ckpt.model_state = {k: v for k, v in ckpt.model_state.items() if "running_var" not in k}
    with pytest.raises(CheckpointError, match="running_var"):
        export_checkpoint(save_checkpoint(ckpt, tmp_path / "nostats.pt"))


def test_fp16_overflowing_folded_scale_is_refused(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "tiny.pt", bn_eps=1e-12)
    ckpt = load_checkpoint(path)
    ckpt.model_state["net.2.running_var"].fill_(1e-12)  # folded scale ~1e6
    save_checkpoint(ckpt, path)
    with pytest.raises(Fp16RangeError, match="net.1.weight: largest magnitude .* exceeds"):
        export_checkpoint(path, output=tmp_path / "half.onnx", fp16=True)
    assert not (tmp_path / "half.onnx").exists()


def test_mismatch_fails_and_writes_nothing(
    checkpoint_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fold = api.fold_model

    def broken_fold(model):
        folded, report = real_fold(model)
        with torch.no_grad():
            folded.net[-1].bias.add_(0.1)  # a fold with a wrong shift
        return folded, report

    monkeypatch.setattr(api, "fold_model", broken_fold)
    with pytest.raises(ExportMismatchError, match="output 'logits'"):
        export_checkpoint(checkpoint_path, output=tmp_path / "m.onnx", repository=tmp_path / "r")
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "r").exists()


def _with_data_spec(path: Path) -> Path:
    ckpt = load_checkpoint(path)
    ckpt.data_spec = {"source": "rows.csv", "target": "y", "seed": 0, "val_fraction": 0.2}
    return save_checkpoint(ckpt, path)


def test_validation_rows_come_from_the_training_helper(
    checkpoint_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    val = types.SimpleNamespace(features=np.ones((40, 6), np.float32))
    fake = types.SimpleNamespace(validation_split=lambda spec: (None, val))
    monkeypatch.setitem(sys.modules, "bnmodel.data", fake)
    report = export_checkpoint(_with_data_spec(checkpoint_path)).report
    assert "validation rows: 40 rows from rows.csv" in report.notes
    assert {c.rows for c in report.comparisons} == {"validation", "random"}


def test_unreadable_validation_data_falls_back_to_random_rows(
    checkpoint_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(spec):
        raise FileNotFoundError("rows.csv")

    monkeypatch.setitem(sys.modules, "bnmodel.data", types.SimpleNamespace(validation_split=fail))
    report = export_checkpoint(_with_data_spec(checkpoint_path)).report
    assert any("verified on random rows only" in n and "rows.csv" in n for n in report.notes)
    assert {c.rows for c in report.comparisons} == {"random"}


def test_fp16_precision_loss_is_reported_not_silent() -> None:
    from bnmodel.export.fp16 import fp16_range_warnings

    tensors = {"net.0.weight": torch.tensor([1.0, 1e-6, 0.0]), "net.0.bias": torch.ones(2)}
    (warning,) = fp16_range_warnings(tensors)
    assert warning.startswith("net.0.weight: 1 of 3 values are nonzero and below")
