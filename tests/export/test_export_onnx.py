"""The ONNX writer: contract names, symbolic batch, no BatchNormalization once folded."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from bnmodel.export.fold import fold_model
from bnmodel.export.onnx_export import ExportError, build_onnx, check_onnx
from export_testlib import make_model
from torch import nn


def _proto(model: nn.Module, task: str = "classification", **kwargs: object) -> onnx.ModelProto:
    return build_onnx(
        list(model.net.named_children()), task=task, in_features=model.config.in_features, **kwargs
    )


def _ops(proto: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in proto.graph.node]


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_folded_graph_has_no_batchnorm_and_unfolded_keeps_every_one(placement: str) -> None:
    model = make_model(bn_placement=placement)
    folded, _ = fold_model(model)
    assert "BatchNormalization" not in _ops(_proto(folded))
    assert _ops(_proto(model)).count("BatchNormalization") == len(model.config.hidden_sizes)


@pytest.mark.parametrize("batch", [1, 4096])
def test_graph_passes_full_check_and_runs_at_any_batch(batch: int) -> None:
    model = make_model(bn_placement="post")
    folded, _ = fold_model(model)
    proto = _proto(folded)
    check_onnx(proto)
    x = np.random.default_rng(0).standard_normal((batch, 6)).astype(np.float32)
    logits, probabilities = _session(proto).run(["logits", "probabilities"], {"features": x})
    assert logits.shape == probabilities.shape == (batch, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_input_and_outputs_follow_the_contract() -> None:
    proto = _proto(make_model(), task="regression")
    check_onnx(proto)
    assert [i.name for i in proto.graph.input] == ["features"]
    assert [o.name for o in proto.graph.output] == ["predictions"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 6
    assert proto.opset_import[0].version == 20


def test_fixed_batch_axis_is_rejected() -> None:
    proto = _proto(make_model())
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 8
    with pytest.raises(ExportError, match="'features' has shape \\[8, 6\\]"):
        check_onnx(proto)


def test_gelu_before_opset_20_is_erf_arithmetic_with_the_same_result() -> None:
    folded, _ = fold_model(make_model(activation="gelu"))
    old, new = _proto(folded, opset=18), _proto(folded, opset=20)
    assert "Gelu" not in _ops(old) and "Erf" in _ops(old) and "Gelu" in _ops(new)
    x = np.random.default_rng(1).standard_normal((64, 6)).astype(np.float32) * 10
    a, b = (_session(p).run(["logits"], {"features": x})[0] for p in (old, new))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_fp16_graph_has_half_precision_io_and_weights() -> None:
    folded, _ = fold_model(make_model())
    proto = _proto(folded, fp16=True)
    check_onnx(proto)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert {t.data_type for t in proto.graph.initializer} == {onnx.TensorProto.FLOAT16}
    out = _session(proto).run(["logits"], {"features": np.zeros((2, 6), np.float16)})[0]
    assert out.dtype == np.float16


def test_unknown_layer_and_bad_opset_are_refused() -> None:
    layers = [("net.0", nn.Linear(6, 4)), ("net.1", nn.LeakyReLU()), ("net.2", nn.Linear(4, 2))]
    with pytest.raises(ExportError, match=r"layer net.1 \(LeakyReLU\) has no ONNX mapping"):
        build_onnx(layers, task="regression", in_features=6)
    with pytest.raises(ExportError, match="opset must be in"):
        build_onnx(layers[:1], task="regression", in_features=6, opset=9)
