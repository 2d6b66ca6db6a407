"""A regressor's target de-standardization folds into its last Linear: target units, no node."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from bnmodel.export.api import export_checkpoint
from bnmodel.export.fold import fold_into_previous, fold_model, target_scale_affine
from export_testlib import make_model

from bnmodel.checkpoint import Checkpoint, save_checkpoint


def _regressor(seed: int = 0):
    model = make_model(seed, out_features=2, standardize_target=True)
    # Target statistics far from (0, 1), as for a target measured in hundreds.
    model.target_scale.set_statistics(torch.tensor([150.0, -3.0]), torch.tensor([77.0, 0.01]))
    return model.eval()


def test_fold_formula_matches_the_module_in_float64() -> None:
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(2, 5, generator=gen), torch.randn(2, generator=gen)
    mean, std = torch.tensor([150.0, -3.0]), torch.tensor([77.0, 0.01])
    w, b = fold_into_previous(weight, bias, target_scale_affine(mean, std))
    x = torch.randn(9, 5, generator=gen, dtype=torch.float64)
    expected = (x @ weight.double().T + bias.double()) * std.double() + mean.double()
    assert torch.allclose(x @ w.double().T + b.double(), expected, rtol=1e-6, atol=1e-5)
    assert w.dtype == weight.dtype  # cast back to the parameter dtype
    assert torch.equal(fold_into_previous(weight, None, target_scale_affine(mean, std))[1], mean)


def test_fold_model_removes_the_target_scale() -> None:
    model = _regressor()
    folded, report = fold_model(model)
    assert any(step.kind == "linear<-target_scale" for step in report.steps)
    assert isinstance(folded.net[-1], torch.nn.Linear)
    x = torch.randn(32, 6)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), rtol=1e-5, atol=1e-4)


def test_exported_graph_emits_target_units_with_no_extra_node(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = _regressor(seed=3)
    ckpt = Checkpoint(
        model_config=model.config,
        model_state=model.state_dict(),
        task="regression",
        feature_names=[f"x{i}" for i in range(6)],
        target_name="y",
    )
    path = save_checkpoint(ckpt, tmp_path / "reg.pt")
    result = export_checkpoint(path, output=tmp_path / "reg.onnx")
    assert result.report is not None and result.report.ok
    assert any("target units" in note for note in result.report.notes)
    graph = onnx.load(str(tmp_path / "reg.onnx")).graph
    assert graph.node[-1].op_type == "Gemm" and not any(n.op_type == "Mul" for n in graph.node)
    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32) * 5
    session = ort.InferenceSession(str(tmp_path / "reg.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    scale = np.abs(want).max(axis=0)
    assert np.all(np.abs(got - want).max(axis=0) / scale < 1e-5)
